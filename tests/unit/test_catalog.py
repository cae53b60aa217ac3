"""The release catalog and GRID_AGENT_DRIVER_* overrides."""

import pytest
from structlog.testing import capture_logs

from agent.catalog import CATALOG, Release, module_version, resolve_release
from agent.errors import ConfigError
from agent.settings import build_settings

PINNED = "b360c7edf0686c7e47b1dc7980baa5c7740a00eb372cfafe045a28b4456fb32b"
OTHER = "ab" * 32


def settings(**env):
    return build_settings({}, {f"GRID_AGENT_{k.upper()}": v for k, v in env.items()})


def test_default_is_the_pinned_azure_580_release():
    release = resolve_release(settings())
    assert release == CATALOG["580.105.08-grid-azure"]
    assert release.url == ("https://download.microsoft.com/download/"
                           "85beffdc-8361-4df4-a823-dcb1b230a7aa/"
                           "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run")
    assert release.sha256 == PINNED
    assert release.module_type == "proprietary"
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
        driver_version="595.58.03-grid-azure",
        driver_url="https://download.example/NVIDIA-Linux-x86_64-595.58.03-grid-azure.run",
        driver_sha256=OTHER))
    assert release == Release("595.58.03-grid-azure", release.url, OTHER, None, "auto")


def test_uncatalogued_version_without_url_names_the_variables():
    with pytest.raises(ConfigError, match="GRID_AGENT_DRIVER_URL"):
        resolve_release(settings(driver_version="595.58.03-grid-azure"))


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
