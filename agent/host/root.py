"""HostRoot: where the agent sees a host path (`/host`, `/proc/PID/root`, `/`, a test dir)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The PATH host commands run with (HostRunner uses the same).
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_LINKS = 40  # the kernel's own limit on symlink hops (ELOOP)


@dataclass(frozen=True)
class HostRoot:
    """Maps absolute host paths under a root, resolving symlinks inside it."""

    root: Path

    def path(self, host_path: str | PurePosixPath) -> Path:
        """The lexical mapping: `/etc/os-release` -> `<root>/etc/os-release`."""
        rel = str(host_path).lstrip("/")
        return self.root / rel if rel else self.root

    def host_path(self, agent_path: str | os.PathLike[str]) -> str:
        """The inverse of `path`: where the host sees a file the agent sees under the root."""
        rel = os.path.relpath(agent_path, self.root)
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"{agent_path} is not under the host root {self.root}")
        return str(PurePosixPath("/", rel))

    def resolve(self, host_path: str | PurePosixPath) -> Path:
        """Follow symlinks the way the host would, never escaping the root.

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
