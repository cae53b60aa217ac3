import pytest
from structlog.testing import capture_logs

from agent.errors import InstallError
from agent.install import licensing as lic
from tests.fakes.runner import FakeRunner
from tests.fakes.tree import Tree

# Shaped like the GRID driver's /etc/nvidia/gridd.conf.template.
TEMPLATE = """\
# /etc/nvidia/gridd.conf.template - Configuration file for NVIDIA Grid Daemon

# Description: Set License Server Address
#ServerAddress=

# Description: Set Feature to be enabled
FeatureType=0

# Description: Parameter to enable or disable Grid Licensing tab in nvidia-settings
#EnableUI=TRUE
"""


@pytest.fixture
def host(tmp_path):
    tree = Tree(tmp_path)
    tree.write(lic.TEMPLATE, TEMPLATE)
    return tree


def test_fresh_conf_is_the_template_the_azure_way(host):
    with capture_logs() as logs:
        assert lic.ensure_gridd_conf(host.root) is True
    conf = host.read(lic.GRIDD_CONF)
    keys = lic.parse_keys(conf)
    assert keys == {"IgnoreSP": "FALSE", "EnableUI": "FALSE"}
    assert "FeatureType=0" not in conf
    assert "# Description: Set License Server Address" in conf  # comments kept
    assert logs[-1]["created"] is True and logs[-1]["changed"] is True
    assert lic.ensure_gridd_conf(host.root) is False  # idempotent


def test_operator_settings_win_and_unknown_keys_are_kept(host):
    host.write(lic.GRIDD_CONF, "ServerAddress=nls.example\nFeatureType=2\nEnableUI=TRUE\n"
                               "ClientConfigTokenPath=/etc/nvidia/ClientConfigToken\n")
    assert lic.ensure_gridd_conf(host.root) is True
    keys = lic.parse_keys(host.read(lic.GRIDD_CONF))
    assert keys == {"FeatureType": "2", "EnableUI": "TRUE", "IgnoreSP": "FALSE",
                    "ServerAddress": "nls.example",
                    "ClientConfigTokenPath": "/etc/nvidia/ClientConfigToken"}
    first = host.read(lic.GRIDD_CONF)
    assert lic.ensure_gridd_conf(host.root) is False
    assert host.read(lic.GRIDD_CONF) == first


def test_feature_type_zero_is_dropped_even_from_an_existing_conf(host):
    host.write(lic.GRIDD_CONF, "FeatureType=0\nIgnoreSP=FALSE\nEnableUI=FALSE\n")
    assert lic.ensure_gridd_conf(host.root) is True
    assert "FeatureType" not in lic.parse_keys(host.read(lic.GRIDD_CONF))


def test_render_is_a_fixed_point():
    once = lic.render_gridd_conf(TEMPLATE, "Foo=bar\nIgnoreSP=TRUE\n")
    assert lic.render_gridd_conf(TEMPLATE, once) == once
    assert "IgnoreSP=TRUE" in once and lic.KEPT_HEADER in once


def test_no_template_and_no_conf_is_not_a_grid_driver(tmp_path):
    with pytest.raises(InstallError, match=r"gridd.conf.template is missing"):
        lic.ensure_gridd_conf(Tree(tmp_path).root)


def test_no_template_but_a_conf_only_gets_the_azure_keys(tmp_path):
    tree = Tree(tmp_path)
    tree.write(lic.GRIDD_CONF, "ServerAddress=x\n")
    assert lic.ensure_gridd_conf(tree.root) is True
    assert lic.parse_keys(tree.read(lic.GRIDD_CONF)) == {
        "ServerAddress": "x", "IgnoreSP": "FALSE", "EnableUI": "FALSE"}


@pytest.fixture
def systemd(host):
    host.mkdir("/run/systemd/system")
    host.write("/lib/systemd/system/nvidia-gridd.service", "[Service]\n")
    lic.ensure_gridd_conf(host.root)
    return host


def test_missing_gridd_unit_is_named(host):
    host.mkdir("/run/systemd/system")
    with pytest.raises(InstallError, match=r"nvidia-gridd.service systemd unit is missing") as e:
        lic.ensure_gridd_running(host.root, FakeRunner())
    assert "unlicensed" in e.value.message


def test_inactive_gridd_is_enabled_now_then_left_alone(systemd):
    runner = (FakeRunner().on("systemctl", "is-enabled", rc=1, times=1)
              .on("systemctl", "is-active", rc=3, times=1).on("systemctl"))
    assert lic.ensure_gridd_running(systemd.root, runner) is True
    assert runner.commands()[-1] == "systemctl enable --now nvidia-gridd.service"
    again = FakeRunner().on("systemctl")
    assert lic.ensure_gridd_running(systemd.root, again) is False
    assert [c[1] for c in again.calls] == ["is-enabled", "is-active"]


def test_active_gridd_is_restarted_when_its_conf_changed(systemd):
    runner = FakeRunner().on("systemctl")
    lic.ensure_gridd_running(systemd.root, runner)  # first sight: started with this conf
    systemd.write(lic.GRIDD_CONF, systemd.read(lic.GRIDD_CONF) + "ServerPort=7070\n")
    runner = FakeRunner().on("systemctl")
    assert lic.ensure_gridd_running(systemd.root, runner) is True
    assert runner.commands()[-1] == "systemctl restart nvidia-gridd.service"
    assert lic.ensure_gridd_running(systemd.root, FakeRunner().on("systemctl")) is False


def test_systemctl_failure_is_an_install_error_with_its_lines(systemd):
    runner = (FakeRunner().on("systemctl", "is-enabled").on("systemctl", "is-active", rc=3)
              .on("systemctl", "enable", rc=1, stderr="Job for nvidia-gridd.service failed.\n"))
    with pytest.raises(InstallError, match=r"Job for nvidia-gridd.service failed") as e:
        lic.ensure_gridd_running(systemd.root, runner)
    assert "journalctl -u nvidia-gridd" in e.value.remedy


def test_without_systemd_gridd_is_started_once(host):
    lic.ensure_gridd_conf(host.root)
    runner = FakeRunner().on("nvidia-gridd", effect=lambda argv: host.process(9, "nvidia-gridd"))
    assert lic.ensure_gridd_running(host.root, runner) is True
    assert lic.ensure_gridd_running(host.root, runner) is False
    assert runner.commands() == ["nvidia-gridd"]


def test_a_linked_gridd_conf_is_refused_and_its_target_never_copied(host):
    # Issue 12: the link's target (a secrets file) was copied into a world-readable conf.
    secret = host.write("/etc/secrets/licence", "ClientConfigToken=s3cr3t\n", mode=0o600)
    link = host.link(lic.GRIDD_CONF, "/etc/secrets/licence")
    with pytest.raises(InstallError, match=r"gridd\.conf: it is a symbolic link") as err:
        lic.ensure_gridd_conf(host.root)
    assert err.value.exit_code == 6 and "cp --remove-destination" in err.value.line()
    assert link.is_symlink() and secret.read_text() == "ClientConfigToken=s3cr3t\n"
    assert sorted(p.name for p in link.parent.iterdir()) == ["gridd.conf", "gridd.conf.template"]


def test_a_linked_template_is_refused_too(host):
    host.write("/etc/secrets/licence", "ClientConfigToken=s3cr3t\n", mode=0o600)
    host.root.path(lic.TEMPLATE).unlink()
    host.link(lic.TEMPLATE, "/etc/secrets/licence")
    with pytest.raises(InstallError, match="template: it is a symbolic link"):
        lic.ensure_gridd_conf(host.root)
    assert not host.root.path(lic.GRIDD_CONF).exists()


def test_the_conf_is_never_more_readable_than_its_source(host):
    host.write(lic.GRIDD_CONF, "ServerAddress=nls.example\n", mode=0o600)
    assert lic.ensure_gridd_conf(host.root) is True
    conf = host.root.path(lic.GRIDD_CONF)
    assert conf.stat().st_mode & 0o777 == 0o600
    conf.unlink()
    assert lic.ensure_gridd_conf(host.root) is True
    assert conf.stat().st_mode & 0o777 == 0o644  # fresh from the 0644 template
