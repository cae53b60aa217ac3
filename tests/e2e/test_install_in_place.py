"""Changes that do not touch the kernel modules are applied in place on the fast path:
no installer, no unload, no reboot; nothing at all when nothing changed."""

import hashlib

import pytest

from tests.e2e.installrun import host_text, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

WANTS = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"


def install(simnode, env):
    result = run_agent(simnode.agent_args(), {**env, "GRID_AGENT_LOG_LEVEL": "debug"},
                       "install")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def loaded(simnode):
    return host_text(simnode, "/sys/module/nvidia/version"), host_text(
        simnode, "/sys/module/nvidia/initstate")


def test_gridd_conf_and_persistence_changes_apply_in_place(simnode, catalog):
    install(simnode, catalog)
    before = loaded(simnode)
    quiet = install(simnode, catalog)
    assert quiet.changed()["in_place"] is False and len(quiet.named("host_command")) <= 3

    conf = simnode.path("/etc/nvidia/gridd.conf")
    conf.write_text(conf.read_text() + "ServerPort=7070\n")  # an operator's licensing change
    simnode.exec(["systemctl", "disable", "nvidia-persistenced.service"])
    assert not simnode.path(WANTS).exists()
    again = install(simnode, catalog)
    assert again.named("fast_path_taken") and "installer" not in again.steps()
    assert again.changed()["in_place"] is True
    changes = again.named("config_changed_in_place")[0]["changes"]
    assert set(changes) == {"licensing", "persistence"}
    argvs = [e["argv"] for e in again.named("host_command")]
    assert any("restart" in a and "nvidia-gridd.service" in " ".join(a) for a in argvs), argvs
    assert "ServerPort=7070" in conf.read_text()
    started = host_text(simnode, "/var/lib/grid-agent/gridd.conf.sha256").strip()
    assert started == hashlib.sha256(conf.read_bytes()).hexdigest()
    assert simnode.path(WANTS).is_symlink()
    assert loaded(simnode) == before  # the modules were never touched
    assert install(simnode, catalog).changed()["in_place"] is False
