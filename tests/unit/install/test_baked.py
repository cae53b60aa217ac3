"""Acquisition order with real files: host cache, then the image's copy, then the URL."""

import hashlib

import pytest
from structlog.testing import capture_logs

from agent.catalog import Release
from agent.host.root import HostRoot
from agent.install import baked
from agent.install.cache import CACHE_DIR
from agent.install.download import DownloadOptions, ensure_installer, new_session
from tests.simnode.httpd import random_bytes

DATA = random_bytes((1 << 20) + 77)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"


@pytest.fixture
def host(tmp_path):
    (tmp_path / "host").mkdir()  # a host root exists; the agent never creates it
    return HostRoot(tmp_path / "host")


@pytest.fixture
def image(tmp_path):
    """The image's /opt/grid-agent/driver, laid out as container/Dockerfile does."""
    return tmp_path / "image-driver"


@pytest.fixture
def served(http_server, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    http_server.add(f"/m/{NAME}", DATA)
    return Release("580.105.08-grid-azure", http_server.url(f"/m/{NAME}"), SHA, None,
                   "proprietary", allow_http=True)


def bake(image, data=DATA, sha=SHA):
    path = image / sha / NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def get(release, host, image):
    return ensure_installer(release, host, session=new_session(), image_dir=image,
                            options=DownloadOptions(read_timeout=5.0),
                            progress=lambda done, total: None)


def events(logs):
    return [e["event"] for e in logs]


def test_the_image_copy_is_verified_into_the_cache_with_no_request(served, host, image,
                                                                   http_server):
    bake(image)
    with capture_logs() as logs:
        path = get(served, host, image)
    assert path == host.path(f"{CACHE_DIR}/{SHA}/{NAME}")
    assert path.read_bytes() == DATA
    assert http_server.count() == 0
    assert "installer_from_image" in events(logs)
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no temp file left
    # Next run: the host cache answers first, the image is not read again.
    (image / SHA / NAME).unlink()
    with capture_logs() as logs:
        assert get(served, host, image) == path
    assert events(logs) == ["installer_cached"] and http_server.count() == 0


def test_the_host_cache_beats_the_image_copy(served, host, image, http_server):
    cached = host.path(f"{CACHE_DIR}/{SHA}/{NAME}")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(DATA)
    bake(image)
    with capture_logs() as logs:
        assert get(served, host, image) == cached
    assert "installer_from_image" not in events(logs) and http_server.count() == 0


def test_a_corrupt_image_copy_is_ignored_and_the_url_serves(served, host, image, http_server):
    bake(image, data=DATA[:-1] + b"x")
    with capture_logs() as logs:
        path = get(served, host, image)
    assert path.read_bytes() == DATA
    assert http_server.count() == 1
    warned = [e for e in logs if e["event"] == "image_installer_corrupt"]
    assert warned and warned[0]["expected"] == SHA
    assert sorted(p.name for p in path.parent.parent.rglob("*") if p.is_file()) == [NAME]


def test_no_image_copy_means_the_download(served, host, image, http_server):
    bake(image, sha="0" * 64)  # another pin's installer: not this one
    assert get(served, host, image).read_bytes() == DATA
    assert http_server.count() == 1


def test_an_unpinned_release_never_takes_baked_bytes(host, image):
    bake(image)
    release = Release("580.105.08-grid-azure", "https://example.invalid/x.run", None, None,
                      "proprietary")
    assert baked.image_copy(release, image) is None
    assert baked.adopt(release, host, image) is None


def test_the_image_copy_is_found_by_its_hash_whatever_its_name(served, host, image):
    (image / SHA).mkdir(parents=True)
    (image / SHA / "driver.run").write_bytes(DATA)
    assert get(served, host, image) == host.path(f"{CACHE_DIR}/{SHA}/{NAME}")
