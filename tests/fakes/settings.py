"""Settings from `GRID_AGENT_*` values given as keywords: settings(driver_version="...")."""

from __future__ import annotations

from agent.settings import Settings, build_settings


def settings(**env: object) -> Settings:
    """Real settings as the CLI builds them; the host root defaults to a path that does not
    exist, never this machine's own `/`."""
    base = {"GRID_AGENT_HOST_ROOT": "/nonexistent"}
    base.update({f"GRID_AGENT_{k.upper()}": str(v) for k, v in env.items()})
    return build_settings({}, base)
