"""The host's installer cache: `/var/cache/grid-agent/<sha256>/<filename>`, verified files only."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import structlog

from agent.errors import DownloadError, UnsafeHostPath
from agent.host.files import fsync_dir
from agent.host.paths import CACHE_DIR
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)

SPARE_BYTES = 16 << 20  # headroom so the download never fills the host's disk to the byte
STALE_PART_SECONDS = 3600  # a temp file this old belongs to a crashed run
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def cache_dir(root: HostRoot, *, create: bool = True) -> Path:
    """The checked cache directory (root's, 0700 when new, no link); exit 5 when unsafe."""
    try:
        return root.real_dir(CACHE_DIR, create=create)
    except UnsafeHostPath as exc:
        raise DownloadError(exc.message, remedy=exc.remedy) from None
    except OSError as exc:
        raise DownloadError(f"cannot {'create' if create else 'open'} the installer cache "
                            f"{CACHE_DIR}: {exc.strerror or exc}") from None


def cached_path(root: HostRoot, sha256: str, filename: str) -> Path:
    """Where the entry would be (lexical: for plans and messages, never for writes)."""
    return root.path(f"{CACHE_DIR}/{sha256}/{filename}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    with path.open("rb") as handle:
        return _digest(handle, chunk)


def _digest(handle: BinaryIO, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := handle.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def lookup(root: HostRoot, sha256: str, filename: str) -> Path | None:
    """The cached file if its bytes still hash to its key; a corrupt entry is removed."""
    host_path = f"{CACHE_DIR}/{sha256}/{filename}"
    try:
        fd = root.open_file(host_path, os.O_RDONLY)  # no link, root's, regular
    except UnsafeHostPath as exc:
        raise DownloadError(exc.message, remedy=exc.remedy) from None
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        got = _digest(handle)
    if got == sha256:
        return cached_path(root, sha256, filename)
    log.warning("cache_entry_corrupt", path=host_path, expected=sha256, got=got)
    root.unlink(host_path)
    return None


def sweep_stale_parts(directory: Path, *, now: float | None = None) -> int:
    """Remove temp files left by a crashed run (never a concurrent run's fresh one)."""
    now = time.time() if now is None else now
    removed = 0
    for part in directory.glob(".*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
                removed += 1
    return removed


def check_space(directory: Path, need: int) -> None:
    """Refuse before downloading when the cache's filesystem cannot hold the file."""
    free = shutil.disk_usage(directory).free
    if free < need + SPARE_BYTES:
        raise DownloadError(
            f"not enough space for the installer in {directory}: need {need} bytes "
            f"(+{SPARE_BYTES} spare), {free} free",
            remedy="free space on the node's disk (the cache is /var/cache/grid-agent)")


def no_space_error(exc: OSError, directory: Path) -> DownloadError | None:
    if exc.errno not in _NO_SPACE:
        return None
    return DownloadError(f"no space left in {directory} while writing the installer "
                         "(the partial file was removed)",
                         remedy="free space on the node's disk and retry")


def open_part(directory: Path, filename: str) -> tuple[BinaryIO, Path]:
    """A fresh temp file in the (checked) cache directory: the final rename stays on one FS."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    return os.fdopen(fd, "w+b"), Path(name)


@contextlib.contextmanager
def part_removed_on_failure(part: Path, directory: Path, what: str) -> Iterator[None]:
    """Any failure removes the temp file; an OSError becomes exit 5 naming the directory."""
    try:
        yield
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise no_space_error(exc, directory) or DownloadError(
            f"{what} {directory}: {exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def land(part: Path, root: HostRoot, sha256: str, filename: str) -> Path:
    """Move a verified temp file to its key; a rename, so readers never see a torn file."""
    try:
        final = root.real_dir(f"{CACHE_DIR}/{sha256}", create=True) / filename
    except UnsafeHostPath as exc:
        raise DownloadError(exc.message, remedy=exc.remedy) from None
    part.chmod(0o644)
    part.replace(final)
    for directory in (final.parent, part.parent):
        fsync_dir(directory)
    return final
