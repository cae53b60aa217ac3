"""HostRoot: the one door to host files (`/host`, `/proc/PID/root`, `/`, a test dir).

Reads may follow the host's own links, resolved inside the root. Everything the agent
creates, writes, deletes or locks is reached by descriptors (openat style): each component
opened with O_NOFOLLOW from a descriptor of the root, host links re-resolved inside the
root by us, and inside the agent's own directories no link at all, only root-owned,
never group/world-writable entries (issue 12).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.errors import UnsafeHostPath
from agent.host.paths import CACHE_DIR, LOCK, STATE_DIR

# The PATH host commands run with (HostRunner uses the same).
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The agent's own directories: nothing in them may be a link, another user's, or writable
# by others, or a less-privileged user could steer a root write (the lock truncating a host
# file, a swapped installer, `--purge` emptying a link's target).
OWNED_DIRS = (CACHE_DIR, STATE_DIR, str(PurePosixPath(LOCK).parent))
_MAX_LINKS = 40  # the kernel's own limit on symlink hops (ELOOP)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKISH = (errno.ELOOP, errno.ENOTDIR)


def owned_split(host_path: str | PurePosixPath) -> tuple[list[str], list[str]]:
    """(host-owned components, agent-owned components) of an absolute host path."""
    parts = [p for p in PurePosixPath("/", str(host_path)).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeHostPath(f"refusing host path {host_path}: `..` is not allowed here")
    for owned in OWNED_DIRS:
        base = PurePosixPath(owned).parts[1:]
        if tuple(parts[:len(base)]) == base:
            return list(base[:-1]), parts[len(base) - 1:]
    return parts, []


def _unsafe(host_path: str, why: str, remedy: str) -> UnsafeHostPath:
    return UnsafeHostPath(f"refusing {host_path}: {why}", remedy=remedy)


def check_owned(fd: int, host_path: str, kind: str) -> os.stat_result:
    """The open descriptor is a root-owned `kind` (directory|file) no one else can write."""
    st = os.fstat(fd)
    fix = (f"remove it (`rm -rf {host_path}` on the node) and retry; the agent re-creates it "
           "root-owned, mode 0700")
    want = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if not want(st.st_mode):
        raise _unsafe(host_path, f"it is not a {kind}", fix)
    if st.st_uid != os.geteuid():
        raise _unsafe(host_path, f"it is owned by uid {st.st_uid}, not root", fix)
    if st.st_mode & 0o022:
        raise _unsafe(host_path, f"it is group- or world-writable (mode {st.st_mode & 0o7777:o})",
                      f"`chmod go-w {host_path}` on the node, or {fix}")
    return st


def _link_refused(host_path: str) -> UnsafeHostPath:
    return _unsafe(host_path, "it is a symbolic link (the agent never follows links in its own "
                   "directories)", f"remove the link (`rm {host_path}` on the node) and retry")


@dataclass(frozen=True)
class HostRoot:
    """Maps absolute host paths under a root, resolving symlinks inside it."""

    root: Path

    def path(self, host_path: str | PurePosixPath) -> Path:
        """The lexical mapping, for reads and messages: `/etc/x` -> `<root>/etc/x`."""
        rel = str(host_path).lstrip("/")
        return self.root / rel if rel else self.root

    def host_path(self, agent_path: str | os.PathLike[str]) -> str:
        """The inverse of `path`: where the host sees a file the agent sees under the root."""
        rel = os.path.relpath(agent_path, self.root)
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"{agent_path} is not under the host root {self.root}")
        return str(PurePosixPath("/", rel))

    def resolve(self, host_path: str | PurePosixPath) -> Path:
        """Follow symlinks the way the host would, never escaping the root (for reads).

        Host symlinks are often absolute (`/lib/modules/<rel>/build -> /usr/src/...`);
        resolving them against the agent's own `/` would look at the container.
        """
        done: list[str] = []
        pending = list(PurePosixPath("/", str(host_path)).parts[1:])
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = self.root.joinpath(*done, part)
            if not candidate.is_symlink():
                done.append(part)
                continue
            hops += 1
            if hops > _MAX_LINKS:
                raise OSError(f"too many levels of symbolic links under {self.path(host_path)}")
            target = PurePosixPath(candidate.readlink())
            if target.is_absolute():
                done = []
            pending = list(target.parts[1:] if target.is_absolute() else target.parts) + pending
        return self.root.joinpath(*done)

    def exists(self, host_path: str | PurePosixPath) -> bool:
        try:
            return self.resolve(host_path).exists()
        except OSError:
            return False

    def which(self, name: str, search_path: str = HOST_PATH) -> Path | None:
        """The agent-visible path of an executable on the host's PATH (no process)."""
        for directory in search_path.split(":"):
            try:
                path = self.resolve(f"{directory}/{name}")
            except OSError:
                continue
            if path.is_file() and os.access(path, os.X_OK):
                return path
        return None

    def read_text(self, host_path: str | PurePosixPath, default: str | None = None) -> str | None:
        """The file's text, or `default` when it is absent or unreadable."""
        try:
            return self.resolve(host_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return default

    # -- the write side: descriptors only ------------------------------------------------

    def _walk_host(self, parts: list[str], *, create: bool, mode: int) -> tuple[int, list[str]]:
        """A descriptor of a host-owned directory; links re-resolved inside the root."""
        stack = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        done: list[str] = []
        pending, hops = list(parts), 0
        try:
            while pending:
                part = pending.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":  # the physical parent we came through, never above the root
                    if len(stack) > 1:
                        os.close(stack.pop())
                        done.pop()
                    continue
                target = self._step(stack[-1], part, create=create, mode=mode)
                if isinstance(target, int):
                    stack.append(target)
                    done.append(part)
                    continue
                hops += 1
                if hops > _MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links",
                                  "/" + "/".join(parts))
                link = PurePosixPath(target)
                if link.is_absolute():
                    while len(stack) > 1:
                        os.close(stack.pop())
                    done = []
                pending = list(link.parts[1:] if link.is_absolute() else link.parts) + pending
            return stack.pop(), done
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _step(parent: int, name: str, *, create: bool, mode: int) -> int | str:
        """The child directory's descriptor, or the link's target text when it is a link."""
        try:
            return os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno not in _LINKISH:
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return os.readlink(name, dir_fd=parent)
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent)
        return os.open(name, _DIR, dir_fd=parent)

    def _walk_owned(self, fd: int, parts: list[str], where: list[str], *, create: bool) -> int:
        """Descend agent-owned components from `fd` (consumed): no links, root's, 0700 new."""
        for part in parts:
            where = [*where, part]
            here = "/" + "/".join(where)
            try:
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    child = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _LINKISH:
                    raise _link_refused(here) from None
                raise
            finally:
                os.close(fd)
            fd = child
            try:
                check_owned(fd, here, "directory")
            except BaseException:
                os.close(fd)
                raise
        return fd

    def open_dir(self, host_path: str | PurePosixPath, *, create: bool = False,
                 mode: int = 0o755) -> int:
        """A descriptor of the host directory (the caller closes it); see the module doc."""
        host, owned = owned_split(host_path)
        fd, done = self._walk_host(host, create=create, mode=mode)
        return self._walk_owned(fd, owned, done, create=create)

    @contextlib.contextmanager
    def dir_fd(self, host_path: str | PurePosixPath, *, create: bool = False,
               mode: int = 0o755) -> Iterator[int]:
        fd = self.open_dir(host_path, create=create, mode=mode)
        try:
            yield fd
        finally:
            os.close(fd)

    def real_dir(self, host_path: str | PurePosixPath, *, create: bool = False,
                 mode: int = 0o755) -> Path:
        """The checked directory as a link-free agent path (created when asked).

        Safe to use by path afterwards: its agent-owned part is root's alone, and only root
        can swap a host-owned directory.
        """
        host, owned = owned_split(host_path)
        fd, done = self._walk_host(host, create=create, mode=mode)
        os.close(self._walk_owned(fd, owned, done, create=create))
        return self.root.joinpath(*done, *owned)

    def open_file(self, host_path: str | PurePosixPath, flags: int, mode: int = 0o600) -> int:
        """open(2) of the last component with O_NOFOLLOW; agent-owned files are checked."""
        parent, name = _split(host_path)
        owned = bool(owned_split(host_path)[1])
        with self.dir_fd(parent, create=bool(flags & os.O_CREAT)) as dfd:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode,
                             dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _link_refused(str(host_path)) from None
                # Named by its host path (dir_fd leaves only the last component).
                raise OSError(exc.errno, exc.strerror, str(host_path)) from None
        try:
            if owned:
                check_owned(fd, str(host_path), "file")
            elif not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(host_path))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def link_target(self, host_path: str | PurePosixPath) -> str | None:
        """The text of the link at host_path (its directory reached safely); None if no link."""
        parent, name = _split(host_path)
        try:
            with self.dir_fd(parent) as dfd:
                return os.readlink(name, dir_fd=dfd)
        except OSError:  # absent, or not a link (EINVAL)
            return None

    def read_nofollow(self, host_path: str | PurePosixPath, limit: int = 1 << 20) -> bytes | None:
        """A regular file's bytes without following a link at the end; None when not one."""
        try:
            fd = self.open_file(host_path, os.O_RDONLY)
        except (OSError, UnsafeHostPath):
            return None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(limit)

    def write_file(self, host_path: str | PurePosixPath, data: str | bytes, *,
                   mode: int = 0o644) -> None:
        """Atomic: a fresh temp file beside it, fsync, rename over (a link there is replaced)."""
        payload = data.encode() if isinstance(data, str) else data
        parent, name = _split(host_path)
        with self.dir_fd(parent, create=True) as dfd:
            tmp = f".{name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fchmod(handle.fileno(), mode)
                    os.fsync(handle.fileno())
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)  # the rename is durable only once the directory entry is on disk

    def unlink(self, host_path: str | PurePosixPath) -> bool:
        """Remove the entry itself (a link, never its target); False when it was absent."""
        parent, name = _split(host_path)
        try:
            with self.dir_fd(parent) as dfd:
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        return True

    def rename(self, host_path: str | PurePosixPath, new_name: str) -> bool:
        """Rename within its directory (no link followed); False when it was absent."""
        parent, name = _split(host_path)
        try:
            with self.dir_fd(parent) as dfd:
                os.rename(name, new_name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except FileNotFoundError:
            return False
        return True

    def remove_tree(self, host_path: str | PurePosixPath) -> bool:
        """Remove a directory tree (or a link or file there, never a link's target)."""
        parent, name = _split(host_path)
        try:
            with self.dir_fd(parent) as dfd:
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    shutil.rmtree(name, dir_fd=dfd)  # fd-based: never leaves the tree
                else:
                    os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        return True

    def empty_dir(self, host_path: str | PurePosixPath) -> int:
        """Remove everything in the directory (links removed, never followed); how many."""
        try:
            fd = self.open_dir(host_path)
        except FileNotFoundError:
            return 0
        try:
            entries = list(os.scandir(fd))
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.name, dir_fd=fd)  # fd-based: never leaves the tree
                else:
                    os.unlink(entry.name, dir_fd=fd)
            return len(entries)
        finally:
            os.close(fd)


def _split(host_path: str | PurePosixPath) -> tuple[str, str]:
    path = PurePosixPath("/", str(host_path))
    if path.name in ("", ".", ".."):
        raise UnsafeHostPath(f"refusing host path {host_path}: it names no file")
    return str(path.parent), path.name
