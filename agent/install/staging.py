"""Execute what was verified: a root-only private copy of the cached installer, hashed as
it is copied, is what runs (issue 12: the cached `.run` was swapped between its hash check
and its execution, and the swapped payload ran as root)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import PurePosixPath

import structlog

from agent.errors import InstallError
from agent.host.paths import CACHE_DIR
from agent.host.root import HostRoot

log = structlog.get_logger(__name__)

STAGE_PREFIX = ".exec-"  # never a cache key (those are 64 hex digits)
_KEY = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_cache_key(name: str) -> bool:
    return bool(_KEY.match(name))


def cache_key(run_path: str) -> tuple[str, str]:
    """(sha256, filename) of `/var/cache/grid-agent/<sha256>/<filename>`; else InstallError."""
    path = PurePosixPath(run_path)
    if str(path.parent.parent) != CACHE_DIR or not _KEY.match(path.parent.name):
        raise InstallError(f"refusing to run {run_path}: only a verified installer from "
                           f"{CACHE_DIR}/<sha256>/ is run",
                           remedy="let the agent fetch the installer (`grid-agent fetch`)")
    return path.parent.name, path.name


def _copy_hashing(src: int, dst: int) -> str:
    digest = hashlib.sha256()
    while block := os.read(src, _CHUNK):
        digest.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view):]
    return digest.hexdigest()


def _copy(root: HostRoot, run_path: str, stage: str, filename: str) -> str:
    src = root.open_file(run_path, os.O_RDONLY)  # no link, root's, regular (HostRoot)
    try:
        with root.dir_fd(stage) as sfd:
            dst = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o500, dir_fd=sfd)
            try:
                got = _copy_hashing(src, dst)
                os.fsync(dst)
            finally:
                os.close(dst)
    finally:
        os.close(src)
    return got


@contextlib.contextmanager
def private_stage(root: HostRoot) -> Iterator[str]:
    """The host path of a fresh 0700 directory in the root-owned cache; removed after use.

    Root-only and new: what is written there (a private copy, an installer's log) cannot be
    swapped or steered by a link someone else planted (a killed run's is swept next time).
    """
    name = f"{STAGE_PREFIX}{secrets.token_hex(6)}"
    stage = f"{CACHE_DIR}/{name}"
    sweep_stages(root)
    try:
        with root.dir_fd(CACHE_DIR, create=True) as cfd:
            os.mkdir(name, 0o700, dir_fd=cfd)
    except OSError as exc:
        raise InstallError(f"cannot make a private directory {stage}: {exc.strerror or exc}",
                           remedy="check the node's disk and /var/cache") from None
    try:
        yield stage
    finally:
        root.remove_tree(stage)


@contextlib.contextmanager
def verified_copy(root: HostRoot, run_path: str) -> Iterator[str]:
    """The host path of a private copy whose bytes hash to the cache key; removed after use.

    The copy sits in a fresh 0700 directory of the root-owned cache (private_stage): no one
    but root can change it between this hash and the exec, so no check-to-use window is left.
    """
    sha256, filename = cache_key(run_path)
    with private_stage(root) as stage:
        try:
            got = _copy(root, run_path, stage, filename)
        except OSError as exc:
            raise InstallError(f"cannot make a private copy of {run_path} in {stage}: "
                               f"{exc.strerror or exc}",
                               remedy="check the node's disk (the copy needs the installer's "
                                      "size again in /var/cache)") from None
        if got != sha256:
            root.unlink(run_path)
            log.warning("installer_changed_after_verification", path=run_path, expected=sha256,
                        got=got)
            raise InstallError(f"the cached installer {run_path} no longer hashes to "
                               f"{sha256} (got {got}); it was removed and nothing was run",
                               remedy="retry: the agent downloads and verifies it again")
        log.debug("installer_staged", path=f"{stage}/{filename}", sha256=sha256)
        yield f"{stage}/{filename}"


def sweep_stages(root: HostRoot) -> int:
    """Remove private copies a killed run left behind (only ever under the host lock)."""
    try:
        with root.dir_fd(CACHE_DIR) as cfd:
            names = [e.name for e in os.scandir(cfd) if e.name.startswith(STAGE_PREFIX)]
    except FileNotFoundError:
        return 0
    for name in names:
        root.remove_tree(f"{CACHE_DIR}/{name}")
    return len(names)
