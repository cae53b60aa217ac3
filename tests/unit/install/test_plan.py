import pytest
from structlog.testing import capture_logs

from agent.host.root import HostRoot
from agent.install import pipeline
from agent.install.plan import format_plan, make_plan
from agent.install.steps import STEPS, applies
from tests.fakes.kit import FakeNode, loaded, settings
from tests.fakes.pci import H100
from tests.fakes.pci_config import config_space


@pytest.fixture
def node(tmp_path):
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/mountinfo").write_text("22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n")
    return FakeNode(HostRoot(tmp_path))


def plan(node, **env):
    return {i.step: i for i in make_plan(settings(**env), node.root, object(), node.kit())}


def test_fresh_node_plans_every_step_and_changes_nothing(node):
    items = plan(node)
    assert list(items) == ["gate", "fast_path", "preflight", "download", "packages",
                           "stale_unload", "nouveau", "installer", "load", "persistence",
                           "licensing", "verify", "publish", "record", "prebuild"]
    assert items["installer"].acts and "no install record" in items["installer"].why
    assert "proprietary" in items["installer"].why
    assert not items["stale_unload"].acts
    assert items["publish"].acts
    assert node.calls == [("snapshot", "kernel")]  # one look: uname -r and nvidia-smi
    assert not node.root.path("/var/lib/grid-agent/state.json").exists()
    text = format_plan(list(items.values()))
    assert "dry run, nothing changed" in text and "act   installer" in text


def test_old_driver_in_use_is_named(node):
    node.state = loaded("570.1", "proprietary", 2, ("nvidia_uvm",))
    item = plan(node)["stale_unload"]
    assert item.acts and "570.1" in item.why and "nvidia_uvm" in item.why
    assert item.why.endswith("else reboot required")
    staged = plan(node, reboot_sentinel="/var/run/reboot-required")["stale_unload"]
    assert "stage the upgrade (/var/run/reboot-required" in staged.why


def test_the_fast_path_plans_in_place_changes_and_prebuilds(node):
    pipeline.install(settings(), node.root, object(), node.kit())
    items = plan(node)
    assert not items["in_place"].acts and not items["prebuild"].acts
    node.root.path("/var/lib/grid-agent/gridd.conf.sha256").write_text("0" * 64 + "\n")
    nxt = "6.8.0-1021-azure"
    node.root.path(f"/lib/modules/{nxt}").mkdir(parents=True)
    node.root.path("/boot").mkdir()
    node.root.path(f"/boot/vmlinuz-{nxt}").write_bytes(b"MZ")
    items = plan(node)
    assert items["in_place"].acts and "licensing" in items["in_place"].why
    assert items["prebuild"].acts and nxt in items["prebuild"].why


def test_installed_node_plans_the_fast_path(node):
    pipeline.install(settings(), node.root, object(), node.kit())
    node.calls.clear()
    items = plan(node)
    assert "only (re)publish" in items["fast_path"].why
    assert "preflight" not in items


def test_not_a_target(node):
    node.devices = [H100]
    items = plan(node)
    assert list(items) == ["gate"] and "nothing to do" in items["gate"].why


def started_steps(node, **env):
    with capture_logs() as logs:
        pipeline.install(settings(**env), node.root, object(), node.kit())
    return [e["name"] for e in logs if e["event"] == "step_started"]


def test_plan_and_install_walk_the_one_declared_step_list(node):
    # Fresh node: every step, in STEPS order, in the plan and in the install alike.
    planned = list(plan(node))[1:]  # after the gate
    assert planned == [s.name for s in STEPS if applies(s, fast=False)] == started_steps(node)
    # Installed node: the fast path, the hand-off and the record, in both walks.
    assert list(plan(node))[1:] == ["fast_path", "in_place", "publish", "record", "prebuild"] == \
        started_steps(node)


def test_what_the_plan_says_is_what_the_install_does(node):
    assert plan(node)["installer"].acts
    started_steps(node)
    assert "run_installer" in node.names()
    node.calls.clear()
    node.reboot()  # the driver autoloads after a reboot; /run is empty
    assert not plan(node)["fast_path"].why.startswith("not taken")
    assert plan(node)["publish"].acts
    node.calls.clear()
    started_steps(node)
    assert "run_installer" not in node.names() and "publish" in node.names()
def test_preflight_names_the_host_vgpu_manager_and_a_known_bad_kernel(node):
    assert "host vGPU manager unknown" in plan(node)["preflight"].why
    dev = node.root.path("/sys/bus/pci/devices/0000:00:02.0")
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    (dev / "config").write_bytes(config_space())
    node.kernel = "6.11.0-1018-azure"
    why = plan(node)["preflight"].why
    assert "host vGPU manager 595.58.02: pin behind" in why
    assert "kernel 6.11.0-1018-azure known bad (downgrade the kernel to 6.8" in why


def test_the_download_line_shows_no_secret(node):
    from tests.fakes.kit import release

    node.release = release(url="https://agent:hunter2@mirror.example/d/x.run?sig=SASSECRET")
    text = format_plan(list(plan(node).values()))
    assert "https://***@mirror.example/d/x.run?***" in text
    assert "hunter2" not in text and "SASSECRET" not in text


GCC12 = 'CONFIG_CC_VERSION_TEXT="gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0"\n'


def put(root, host_path, text="", mode=0o755):
    path = root.path(host_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def ubuntu_22_04_gcc(node):
    """An HWE kernel built by gcc-12 on a host whose gcc is 11 (Ubuntu 22.04's links)."""
    put(node.root, f"/usr/src/linux-headers-{node.kernel}/.config", GCC12, 0o644)
    put(node.root, "/usr/bin/x86_64-linux-gnu-gcc-11", "#!/bin/sh\n")
    node.root.path("/usr/bin/gcc-11").symlink_to("x86_64-linux-gnu-gcc-11")
    node.root.path("/usr/bin/gcc").symlink_to("gcc-11")


def test_packages_names_the_kernels_compiler_and_its_install(node):
    ubuntu_22_04_gcc(node)
    item = plan(node)["packages"]
    assert item.acts
    assert item.why == (f"linux-headers-{node.kernel} present; compiler: kernel built by "
                        "'gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0'; the host's gcc is 11: "
                        "CC=gcc-12 (apt-get install gcc-12)")
    put(node.root, "/usr/bin/gcc-12", "#!/bin/sh\n")
    item = plan(node)["packages"]
    assert not item.acts and item.why.endswith("CC=gcc-12 (present)")
    assert node.calls == [("snapshot", "kernel")] * 2  # no process: files only
    assert not node.root.path("/var/lib/grid-agent").exists()


def test_no_build_no_compiler(node):
    ubuntu_22_04_gcc(node)
    pipeline.install(settings(), node.root, object(), node.kit())
    node.reboot(autoload=False)  # built for this kernel, not loaded: no fast path, no build
    item = plan(node)["packages"]
    assert item.why == f"linux-headers-{node.kernel} present" and not item.acts


def cuda_driver(node, version="535.183.01"):
    status = "".join(f"Package: {p}\nStatus: install ok installed\nVersion: {version}-0ubuntu1\n\n"
                     for p in ("nvidia-driver-535", "libnvidia-container1"))
    put(node.root, "/var/lib/dpkg/status", status, 0o644)
    put(node.root, f"/var/lib/dkms/nvidia/{version}/source", "", 0o644)


def test_a_foreign_driver_is_named_with_what_install_would_do(node):
    cuda_driver(node)
    item = plan(node)["stale_unload"]
    assert item.acts
    assert item.why == ("another NVIDIA driver (packages nvidia-driver-535; DKMS "
                        "nvidia/535.183.01): unload its module, remove its DKMS trees "
                        "and modules, apt-get purge its packages when unused, else exit 6 "
                        "naming it and its users")
    node.state = loaded("535.183.01", "proprietary", 1, ("nvidia_uvm",))
    item = plan(node)["stale_unload"]
    assert item.why.startswith("driver 535.183.01 is loaded (refcnt 1, holders nvidia_uvm)")
    assert item.why.endswith("; another NVIDIA driver (packages nvidia-driver-535; DKMS "
                             "nvidia/535.183.01): unload its module, remove its DKMS trees "
                             "and modules, apt-get purge its packages when unused, else "
                             "exit 6 naming it and its users")
    assert node.root.path("/var/lib/dkms/nvidia/535.183.01/source").exists()


def test_the_fast_path_leaves_a_foreign_driver_alone_and_says_so(node):
    pipeline.install(settings(), node.root, object(), node.kit())
    cuda_driver(node)
    items = plan(node)
    assert "stale_unload" not in items
    assert items["fast_path"].why.endswith("only (re)publish; another NVIDIA driver (packages "
                                           "nvidia-driver-535; DKMS nvidia/535.183.01) is left "
                                           "alone")

