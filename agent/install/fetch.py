"""`grid-agent fetch`: download and verify the pinned installer into the host cache."""

from __future__ import annotations

from collections.abc import Callable

import requests

from agent.catalog import resolve_release
from agent.host import host_root
from agent.install.download import download_options, ensure_installer
from agent.settings import Settings


def fetch_command(settings: Settings, *, echo: Callable[[str], None],
                  session: requests.Session | None = None) -> None:
    """Prints the cached installer's host path; DownloadError (exit 5) when it cannot."""
    release = resolve_release(settings)
    root = host_root(settings)
    path = ensure_installer(release, root, session=session, options=download_options(settings))
    echo(root.host_path(path))
