"""The host cache's own rules: keyed lookups, stale temp files, space."""

import hashlib
import os

import pytest

from agent.errors import DownloadError
from agent.host.root import HostRoot
from agent.install import cache


def test_lookup_misses_then_hits_then_drops_a_corrupt_entry(tmp_path):
    root = HostRoot(tmp_path)
    sha = hashlib.sha256(b"payload").hexdigest()
    assert cache.lookup(root, sha, "d.run") is None
    path = cache.cached_path(root, sha, "d.run")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"payload")
    assert cache.lookup(root, sha, "d.run") == path
    path.write_bytes(b"tampered")
    assert cache.lookup(root, sha, "d.run") is None
    assert not path.exists()


def test_sweep_removes_only_stale_temp_files(tmp_path):
    old = tmp_path / ".d.run.abc.part"
    fresh = tmp_path / ".d.run.def.part"
    keep = tmp_path / "d.run"
    for path in (old, fresh, keep):
        path.write_bytes(b"x")
    os.utime(old, (1000, 1000))
    assert cache.sweep_stale_parts(tmp_path, now=1000 + cache.STALE_PART_SECONDS + 1) == 1
    assert not old.exists() and fresh.exists() and keep.exists()


def test_check_space_names_the_need(tmp_path):
    cache.check_space(tmp_path, 1)
    with pytest.raises(DownloadError, match="not enough space") as err:
        cache.check_space(tmp_path, 1 << 60)
    assert err.value.exit_code == 5


def test_land_is_a_rename_into_the_key(tmp_path):
    root = HostRoot(tmp_path)
    handle, part = cache.open_part(cache.cache_dir(root), "d.run")
    with handle:
        handle.write(b"abc")
    final = cache.land(part, root, "f" * 64, "d.run")
    assert final.read_bytes() == b"abc" and not part.exists()
    assert final == tmp_path / "var/cache/grid-agent" / ("f" * 64) / "d.run"
