"""The release catalog and GRID_AGENT_DRIVER_* overrides."""

import pytest
from structlog.testing import capture_logs

from agent.catalog import (
    CATALOG,
    Release,
    known_bad_kernel,
    module_version,
    resolve_release,
    vgpu_release,
)
from agent.errors import ConfigError
from tests.fakes.settings import settings

PINNED = "b360c7edf0686c7e47b1dc7980baa5c7740a00eb372cfafe045a28b4456fb32b"
OTHER = "ab" * 32


def test_default_is_the_pinned_azure_580_release():
    release = resolve_release(settings())
    assert release == CATALOG["580.105.08-grid-azure"]
    assert release.url == ("https://download.microsoft.com/download/"
                           "85beffdc-8361-4df4-a823-dcb1b230a7aa/"
                           "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run")
    assert release.sha256 == PINNED
    assert release.module_type == "auto"  # the installer recommends (open here)
    assert release.filename == "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
    assert not release.allow_http


def test_mirror_url_keeps_the_catalog_pin():
    release = resolve_release(settings(driver_url="https://mirror.cluster.local/d/x.run"))
    assert release.url == "https://mirror.cluster.local/d/x.run"
    assert release.sha256 == PINNED
    assert release.filename == "x.run"


def test_sha256_override_wins_and_is_logged():
    with capture_logs() as logs:
        release = resolve_release(settings(driver_sha256=OTHER.upper()))
    assert release.sha256 == OTHER
    assert [e["event"] for e in logs] == ["driver_sha256_overridden"]


def test_uncatalogued_version_with_url_and_sha256():
    release = resolve_release(settings(
        driver_version="595.71.05-grid-azure",
        driver_url="https://download.example/NVIDIA-Linux-x86_64-595.71.05-grid-azure.run",
        driver_sha256=OTHER))
    assert release == Release("595.71.05-grid-azure", release.url, OTHER, None, "auto")
    assert release.vgpu_branch == 20


def test_uncatalogued_version_without_url_names_the_variables():
    with pytest.raises(ConfigError, match="GRID_AGENT_DRIVER_URL"):
        resolve_release(settings(driver_version="595.71.05-grid-azure"))


def test_microsofts_ncv6_vgpu20_driver_is_catalogued_without_a_pin():
    release = CATALOG["595.58.03-grid-azure"]
    assert release.url == ("https://download.microsoft.com/download/"
                           "51239696-ec04-4c02-a6b3-1d9c608fb57c/"
                           "NVIDIA-Linux-x86_64-595.58.03-grid-azure.run")
    assert release.sha256 is None and release.module_type == "open"
    assert (release.vgpu_branch, CATALOG["580.105.08-grid-azure"].vgpu_branch) == (20, 19)


def test_missing_pin_says_how_to_obtain_one():
    with pytest.raises(ConfigError) as caught:
        resolve_release(settings(driver_version="595.58.03-grid-azure"))
    line = caught.value.line()
    assert caught.value.exit_code == 2
    for needed in ("has no pinned SHA-256 (its publisher gives no SHA-256)",
                   "download https://download.microsoft.com/download/51239696-",
                   "`sha256sum NVIDIA-Linux-x86_64-595.58.03-grid-azure.run`",
                   "set GRID_AGENT_DRIVER_SHA256 to its 64 hex digits",
                   "GRID_AGENT_ALLOW_UNVERIFIED=true instead runs whatever the URL serves as "
                   "root on every node, without any integrity check"):
        assert needed in line
    assert "\n" not in line


def test_pinning_microsofts_driver_yourself():
    release = resolve_release(settings(driver_version="595.58.03-grid-azure",
                                       driver_sha256=OTHER))
    assert release.sha256 == OTHER and release.url == CATALOG["595.58.03-grid-azure"].url


@pytest.mark.parametrize(("version", "branch"), [
    ("535.261.03", 16), ("550.127.05-grid-azure", 17), ("570.195.03-grid-azure", 18),
    ("580.105.08-grid-azure", 19), ("595.58.03-grid-azure", 20), ("610.10", None),
    ("bogus", None)])
def test_vgpu_release_of_a_branch(version, branch):
    assert vgpu_release(version) == branch


@pytest.mark.parametrize(("kernel", "bad"), [
    ("6.11.0-1018-azure", True), ("6.11.0-29-generic", True), ("6.11", True),
    ("6.8.0-1021-azure", False), ("6.1.0-27-amd64", False), ("6.110.0", False),
    ("5.6.11-azure", False)])
def test_known_bad_kernels(kernel, bad):
    found = known_bad_kernel(kernel)
    assert bool(found) is bad
    if bad:
        assert "6.8" in found[0].advice and "Microsoft Learn" in found[0].source


def test_unverified_is_refused_without_opt_in():
    with pytest.raises(ConfigError, match=r"no pinned SHA-256.*GRID_AGENT_ALLOW_UNVERIFIED"):
        resolve_release(settings(driver_version="595.58.03",
                                 driver_url="https://download.example/d.run"))


def test_unverified_with_opt_in_warns_loudly():
    with capture_logs() as logs:
        release = resolve_release(settings(driver_version="595.58.03", allow_unverified="true",
                                           driver_url="https://download.example/d.run"))
    assert release.sha256 is None
    (event,) = logs
    assert event["event"] == "unverified_driver_download"
    assert event["log_level"] == "warning"
    assert "NO SHA-256" in event["warning"]


@pytest.mark.parametrize("url", ["http://mirror.local/d.run", "ftp://mirror/d.run",
                                 "file:///tmp/d.run", "https:///nohost"])
def test_non_https_urls_are_refused(url):
    with pytest.raises(ConfigError, match=r"(?i)https"):
        resolve_release(settings(driver_url=url))


def test_http_mirror_needs_its_own_opt_in():
    release = resolve_release(settings(driver_url="http://mirror.local/d.run",
                                       allow_http_mirror="true"))
    assert release.allow_http and release.sha256 == PINNED


def test_http_mirror_opt_in_does_not_open_the_catalog_url_to_http():
    assert not resolve_release(settings(allow_http_mirror="true")).allow_http


def test_bad_sha256_is_a_usage_error_naming_the_variable():
    with pytest.raises(ConfigError, match=r"GRID_AGENT_DRIVER_SHA256.*64 hexadecimal"):
        settings(driver_sha256="abc")


@pytest.mark.parametrize("var", ["download_connect_timeout", "download_read_timeout"])
def test_zero_timeouts_are_refused(var):
    with pytest.raises(ConfigError, match=var.upper()):
        settings(**{var: "0"})


@pytest.mark.parametrize(("version", "module"), [
    ("580.105.08-grid-azure", "580.105.08"), ("595.58.03", "595.58.03"),
    (" 570.1.2-x ", "570.1.2")])
def test_module_version(version, module):
    assert module_version(version) == module


def test_module_version_refuses_a_name_without_numbers():
    with pytest.raises(ConfigError, match="version number"):
        module_version("latest")


@pytest.mark.parametrize(("url", "name"), [
    ("https://h/a/b/file%20x.run", "file x.run"),
    ("https://h/", "NVIDIA-Linux-x86_64-v.run"),
    ("https://h/a/..", "NVIDIA-Linux-x86_64-v.run"),
    ("https://h/a/.hidden", "NVIDIA-Linux-x86_64-v.run")])
def test_filename_is_a_plain_name(url, name):
    assert Release("v", url, None, None, "auto").filename == name
