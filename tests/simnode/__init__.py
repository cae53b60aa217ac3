"""The simulated node rig and the fault-injecting HTTP server."""
