"""The kernel's own compiler, with real parts (issue 13, item 4).

Scenario host-gcc-11: the node's `gcc` is Debian's real gcc-11 and gcc-12 is not
installed, while the kernel (Debian's 6.1 headers here) was built by gcc-12 with
CONFIG_INIT_STACK_ALL_ZERO=y. The `.run` used here carries no prebuilt modules, so
every install runs the real kbuild against those headers.
"""

import shutil

import pytest

from tests.e2e.installrun import catalog_env, host_text, record, run_agent
from tests.simnode.driver_run import build_fake_run

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]

RUN = "/var/tmp/NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
LOG = "/var/log/nvidia-installer.log"


@pytest.fixture(scope="module")
def uncached_run(tmp_path_factory):
    return build_fake_run(tmp_path_factory.mktemp("uncached-run"), releases=[])


@pytest.fixture
def uncached_catalog(http_server, uncached_run):
    import hashlib

    path = f"/uncached/{uncached_run.name}"
    data = uncached_run.read_bytes()
    http_server.add(path, data)
    return catalog_env(http_server.url(path), hashlib.sha256(data).hexdigest())


def installed_ko(node):
    found = list(node.path(f"/lib/modules/{node.kernel_release}").rglob("nvidia.ko"))
    assert len(found) == 1, found
    return found[0].read_bytes()


def test_gcc_11_fails_the_real_kbuild_without_the_fix_and_passes_with_it(
        simnode, uncached_run, uncached_catalog):
    simnode.set_scenarios("host-gcc-11")
    assert simnode.exec(["gcc", "--version"]).stdout.startswith("gcc (Debian 11.")
    assert simnode.exec(["sh", "-c", "command -v gcc-12"], check=False).returncode != 0
    config = simnode.path(f"/lib/modules/{simnode.kernel_release}/build/.config").read_text()
    assert 'CONFIG_CC_VERSION_TEXT="gcc-12 ' in config and "CONFIG_INIT_STACK_ALL_ZERO=y" in config

    # Without the fix: the installer as the agent used to run it (no CC), real kbuild.
    target = simnode.path(RUN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(uncached_run, target)
    before = simnode.exec(["sh", RUN, "--silent", "--no-drm", "-M", "open"], check=False)
    assert before.returncode == 1
    log = host_text(simnode, LOG)
    assert "unrecognized command-line option" in log and "-ftrivial-auto-var-init=zero" in log

    # With the fix: the agent reads the kernel's compiler, installs gcc-12, passes it on.
    result = run_agent(simnode.agent_args(), uncached_catalog, "install")
    assert result.returncode == 0, result.error() or result.stderr[-3000:]
    installing, = result.named("kernel_compiler_installing")
    assert installing["package"] == "gcc-12"
    assert result.named("installer_started")[0]["cc"] == "gcc-12"
    assert simnode.exec(["sh", "-c", "command -v gcc-12"]).stdout.strip() == "/usr/bin/gcc-12"
    ko = installed_ko(simnode)
    assert b"GCC: (Debian 12.2.0" in ko and b"GCC: (Debian 11." not in ko  # .comment
    assert record(simnode)["outcome"] == "installed"


def test_the_kernels_compiler_that_cannot_be_had_is_exit_4_naming_it(simnode, catalog):
    simnode.set_scenarios("host-gcc-11", "apt-offline")
    result = run_agent(simnode.agent_args(), catalog, "install")
    assert result.returncode == 4, result.stderr[-3000:]
    assert "gcc-12" in result.error() and "cannot be installed" in result.error()
    rec = record(simnode)
    assert (rec["outcome"], rec["exit_code"]) == ("failed", 4)
