"""The health sidecar: checks, the watch loop, its endpoints and metrics, exec probes."""
