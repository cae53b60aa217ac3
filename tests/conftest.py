"""Shared pytest plugins: the simulated node rig and the fault-injecting HTTP server."""

import pytest
import structlog

# Each rig module registers its fixtures here (add yours to the list).
pytest_plugins: list[str] = ["tests.simnode.httpd", "tests.simnode.fixtures",
                             "tests.e2e.installrun"]


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Each test starts from structlog's defaults, whatever an earlier CLI run configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
