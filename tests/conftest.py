"""Shared pytest plugins: the simulated node rig and the fault-injecting HTTP server."""

# Each rig module registers its fixtures here (add yours to the list).
pytest_plugins: list[str] = ["tests.simnode.httpd", "tests.simnode.fixtures",
                             "tests.e2e.installrun"]
