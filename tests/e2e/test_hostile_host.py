"""A hostile node (issue 12): what a less-privileged user, a broken image or a crash leaves
on the host's disk is input. Each attack runs against the simulated node and must be
refused cleanly (one line, the exit code of its class, no traceback) or made harmless.
"""

import os
import shutil

import pytest

from agent.host.paths import DRIVER_ROOT
from agent.host.runner import HostRunner
from agent.install import installer, nouveau
from tests.e2e.installrun import MARKER, STATE, host_text, record, run_agent

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

PWNED = "/var/pwned"


def install(node, env, *extra):
    return run_agent(node.agent_args(), env, "install", *extra)


def clean_failure(result, code, *needles):
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.error(), result.error()


def test_a_lock_linked_to_a_host_file_is_refused(simnode, catalog):
    simnode.path("/etc/important.conf").write_text("keep\n")
    simnode.exec(["mkdir", "-p", "-m", "0700", "/run/grid-agent"])
    simnode.exec(["ln", "-s", "/etc/important.conf", "/run/grid-agent/lock"])
    result = install(simnode, catalog)
    clean_failure(result, 6, "refusing /run/grid-agent/lock: it is a symbolic link")
    assert host_text(simnode, "/etc/important.conf") == "keep\n"
    assert host_text(simnode, MARKER) is None


def test_a_linked_state_directory_is_refused(simnode, catalog):
    simnode.exec(["mkdir", "-p", "/srv/elsewhere", "/var/lib"])
    simnode.exec(["ln", "-s", "/srv/elsewhere", "/var/lib/grid-agent"])
    result = install(simnode, catalog)
    clean_failure(result, 6, "refusing /var/lib/grid-agent: it is a symbolic link")
    assert os.listdir(simnode.path("/srv/elsewhere")) == []


@pytest.mark.parametrize(("owner", "mode", "why"), [
    ("1000:1000", "0755", "owned by uid 1000"),
    ("0:0", "0777", "group- or world-writable"),
])
def test_a_foreign_or_writable_cache_is_a_download_error(simnode, catalog, owner, mode, why):
    simnode.exec(["mkdir", "-p", "-m", mode, "/var/cache/grid-agent"])
    simnode.exec(["chmod", mode, "/var/cache/grid-agent"])
    simnode.exec(["chown", owner, "/var/cache/grid-agent"])
    result = install(simnode, catalog)
    clean_failure(result, 5, "refusing /var/cache/grid-agent", why)
    assert not list(simnode.path("/var/cache/grid-agent").iterdir())


def test_purge_through_a_linked_cache_never_empties_the_target(simnode, catalog):
    assert install(simnode, catalog).returncode == 0
    shutil.rmtree(simnode.path("/var/cache/grid-agent"))
    simnode.exec(["mkdir", "-p", "/srv/data"])
    simnode.path("/srv/data/precious").write_text("keep\n")
    simnode.exec(["ln", "-s", "/srv/data", "/var/cache/grid-agent"])
    result = run_agent(simnode.agent_args(), catalog, "uninstall", "--purge")
    clean_failure(result, 6, "refusing /var/cache/grid-agent: it is a symbolic link")
    assert host_text(simnode, "/srv/data/precious") == "keep\n"


def test_a_linked_gridd_conf_is_refused_and_the_secret_stays_private(simnode, catalog):
    simnode.exec(["mkdir", "-p", "/etc/nvidia", "/etc/secrets"])
    simnode.path("/etc/secrets/licence").write_text("ClientConfigToken=s3cr3t\n")
    simnode.path("/etc/secrets/licence").chmod(0o600)
    simnode.exec(["ln", "-s", "/etc/secrets/licence", "/etc/nvidia/gridd.conf"])
    result = install(simnode, catalog)
    clean_failure(result, 6, "refusing /etc/nvidia/gridd.conf: it is a symbolic link")
    assert simnode.path("/etc/nvidia/gridd.conf").is_symlink()
    assert record(simnode)["exit_code"] == 6 and host_text(simnode, MARKER) is None


def test_an_absolute_link_never_takes_a_write_outside_the_node(simnode, tmp_path):
    # Through /proc/PID/root an absolute host link is resolved against *this* machine's /:
    # a lexical path would have written the blacklist into tmp_path/outside.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(simnode.path("/etc/modprobe.d"), ignore_errors=True)
    simnode.exec(["ln", "-sfn", str(outside), "/etc/modprobe.d"])
    assert nouveau.ensure_blacklist(simnode.root) is True
    assert os.listdir(outside) == []
    inside = simnode.path(f"{outside}/{nouveau.BLACKLIST.rsplit('/', 1)[1]}")
    assert inside.read_text() == nouveau.BLACKLIST_TEXT


class SwappingRunner(HostRunner):
    """The real runner; right before the first installer command it swaps the cached .run.

    That is the window issue 12 found (48 ms between hash and exec): the swapped payload
    would write PWNED on the host if the agent executed the cache entry by path.
    """

    def __init__(self, pid, cached, evil):
        super().__init__(pid=pid)
        self.cached, self.evil, self.swapped = cached, evil, False

    def run(self, argv, **kw):
        if argv[0] == "sh" and not self.swapped:
            self.cached.unlink()
            self.cached.write_bytes(self.evil)
            self.cached.chmod(0o755)
            self.swapped = True
        return super().run(argv, **kw)


def test_an_installer_swapped_after_its_check_never_runs(simnode, fake_run, fake_run_sha256):
    host_path = f"/var/cache/grid-agent/{fake_run_sha256}/{fake_run.name}"
    directory = simnode.root.real_dir(host_path.rsplit("/", 1)[0], create=True)
    shutil.copy(fake_run, directory / fake_run.name)
    evil = f"#!/bin/sh\necho swapped > {PWNED}\nexit 0\n".encode()
    runner = SwappingRunner(simnode.pid, directory / fake_run.name, evil)
    installer.run_installer(simnode.root, runner, host_path, "open", timeout=300)
    assert runner.swapped
    assert host_text(simnode, PWNED) is None  # the swapped bytes never ran...
    assert simnode.path("/usr/bin/nvidia-smi").stat().st_size > 0  # ...the verified ones did
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".exec-")]
    assert host_text(simnode, STATE) is None


def mounts(node):
    return len(node.mountinfo().splitlines())


@pytest.mark.parametrize("target", ["/", "/srv/decoy"])
def test_a_link_at_the_driver_root_is_replaced_and_installs_never_stack(simnode, catalog,
                                                                         target):
    simnode.exec(["mkdir", "-p", "/run/nvidia", "/srv/decoy"])
    simnode.exec(["ln", "-s", target, DRIVER_ROOT])
    assert install(simnode, catalog).returncode == 0
    driver = simnode.path(DRIVER_ROOT)
    assert driver.is_dir() and not driver.is_symlink()
    first = mounts(simnode)
    for _ in range(2):
        again = install(simnode, catalog)
        assert again.returncode == 0, again.stderr[-3000:]
        assert mounts(simnode) == first
    assert os.listdir(simnode.path("/srv/decoy")) == []
    assert host_text(simnode, MARKER) is not None


def test_a_foreign_tmpfs_at_the_driver_root_is_refused(simnode, catalog):
    simnode.exec(["mkdir", "-p", DRIVER_ROOT])
    simnode.exec(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", DRIVER_ROOT])
    before = mounts(simnode)
    for _ in range(2):
        result = install(simnode, catalog)
        clean_failure(result, 6, "foreign tmpfs mount", "at /run/nvidia/driver, not host /")
        assert mounts(simnode) == before
        assert host_text(simnode, MARKER) is None
    assert record(simnode)["exit_code"] == 6
