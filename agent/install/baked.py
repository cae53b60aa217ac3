"""The installer baked into the agent's image (air-gapped nodes): verified, then cached.

`container/Dockerfile --build-arg DRIVER_RUN=<file> --build-arg DRIVER_SHA256=<hex>`
puts a `.run` whose SHA-256 the build checked at `/opt/grid-agent/driver/<sha256>/<file>`
in the image. The agent hashes it again while copying it into the host cache (the bytes
the host will execute are the bytes that were hashed), so the acquisition order is:
host cache, then this copy, then the mirror or URL.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import structlog

from agent.catalog import Release
from agent.errors import DownloadError
from agent.host.root import HostRoot
from agent.install import cache

log = structlog.get_logger(__name__)

IMAGE_DRIVER_DIR = Path("/opt/grid-agent/driver")  # the agent's own filesystem, not the host's
CHUNK = 1 << 20


def image_copy(release: Release, directory: Path) -> Path | None:
    """The image's copy of this release's installer, looked up by its pinned SHA-256 only.

    The file name does not matter (a mirror may name it otherwise): the hash names the bytes.
    """
    if release.sha256 is None:
        return None  # an unpinned release cannot be matched to baked bytes
    try:
        found = sorted(p for p in (directory / release.sha256).iterdir() if p.is_file())
    except OSError:
        return None
    return found[0] if found else None


def adopt(release: Release, root: HostRoot, directory: Path) -> Path | None:
    """Copy the image's installer into the host cache, verified; None when there is none.

    A copy whose bytes do not hash to the pin is ignored with a warning (the download
    follows); it never reaches the cache.
    """
    src = image_copy(release, directory)
    if src is None or release.sha256 is None:
        return None
    target_dir = cache.cache_dir(root)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        cache.check_space(target_dir, src.stat().st_size)
        handle, part = cache.open_part(target_dir, release.filename)
    except OSError as exc:
        raise DownloadError(f"cannot write the installer cache {target_dir}: {exc}") from None
    digest = hashlib.sha256()
    with cache.part_removed_on_failure(part, target_dir, "cannot copy the image's installer into"):
        with handle, src.open("rb") as source:
            while block := source.read(CHUNK):
                handle.write(block)
                digest.update(block)
            handle.flush()
            os.fsync(handle.fileno())
        got = digest.hexdigest()
        if got != release.sha256:
            part.unlink(missing_ok=True)
            log.warning("image_installer_corrupt", path=str(src), expected=release.sha256,
                        got=got)
            return None
        final = cache.land(part, root, got, release.filename)
    log.info("installer_from_image", path=str(final), source=str(src), sha256=got, changed=True)
    return final
