import hashlib

import pytest

from agent.errors import InstallError
from agent.host.root import HostRoot
from agent.install import installer as inst
from tests.fakes.runner import FakeRunner

LOG_FAIL = """\
-> Installing NVIDIA driver version 580.105.08.
ERROR: An error occurred while performing the step: "Building kernel modules".
WARNING: something harmless
ERROR: Unable to load the kernel module 'nvidia.ko'.
ERROR: Installation has failed.
"""
# What the real 580.105.08 installer says when -M names a type the GPUs cannot use
# (kernel.c): a WARNING, and it installs anyway. Never an ERROR naming the open modules.
LOG_FORCED = """\
WARNING: The 'NVIDIA Proprietary' kernel modules are incompatible with the GPU(s) detected \
on this system. They will be installed anyway, but are not expected to work.
-> Installation of the NVIDIA Accelerated Graphics Driver for Linux-x86_64 is now complete.
"""
# makeself's own lines come first on stdout; the installer's answer is a line of its own.
RECOMMEND_OUT = """\
Verifying archive integrity...  100%   MD5 checksums are OK. All good.
Uncompressing NVIDIA Accelerated Graphics Driver for Linux-x86_64 580.105.08  100%
open
"""
NVRM = ("[ 12.3] NVRM: The NVIDIA GPU 0000:00:02.0 (PCI ID: 10de:2bb5) installed in this system "
        "requires use of the NVIDIA open kernel modules.\n[ 12.4] NVRM: RmInitAdapter failed!\n")


def scripted(root, *, rc=0, stdout="", log_text=None, before=None) -> FakeRunner:
    """Plays the host: any command answers rc/stdout; first `before(argv)`, then the log
    its argv names is written as the installer does (links followed)."""
    def effect(argv):
        if before is not None:
            before(argv)
        logs = [a.split("=", 1)[1] for a in argv if a.startswith("--log-file-name=")]
        if log_text is not None and logs:
            path = root.path(logs[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(log_text)

    return FakeRunner().on(rc=rc, stdout=stdout, effect=effect)


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


def cached(root, data=b"#!/bin/sh\necho real\n", name="d.run"):
    """A verified cache entry: `/var/cache/grid-agent/<sha256 of data>/<name>`."""
    host_path = f"/var/cache/grid-agent/{hashlib.sha256(data).hexdigest()}/{name}"
    root.real_dir(host_path.rsplit("/", 1)[0], create=True)
    root.path(host_path).write_bytes(data)
    return host_path


def add_dkms(root, where="/usr/sbin"):
    path = root.path(f"{where}/dkms")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("requested", "recommended", "want"), [
    ("proprietary", None, inst.ModuleChoice("proprietary", True, "proprietary")),
    ("proprietary-strict", None, inst.ModuleChoice("proprietary", False, "proprietary-strict")),
    ("open", None, inst.ModuleChoice("open", False, "open")),
    ("auto", "open", inst.ModuleChoice("open", False, "auto")),
    ("auto", "proprietary", inst.ModuleChoice("proprietary", False, "auto")),
])
def test_choose_module_type(requested, recommended, want):
    assert inst.choose_module_type(requested, recommended, "580.105.08") == want


@pytest.mark.parametrize(("version", "want"), [
    ("580.105.08", "open"), ("560.28.03", "open"), ("595.58.03", "open"),
    ("550.144.03", "proprietary"), ("535.261.03", "proprietary"),
])
def test_auto_without_an_answer_follows_the_branch_like_the_gpu_operator(version, want):
    assert inst.choose_module_type("auto", None, version) == inst.ModuleChoice(want, False, "auto")


def test_auto_without_an_answer_or_a_branch_is_an_install_error():
    with pytest.raises(InstallError, match="driver branch"):
        inst.choose_module_type("auto", None, "")


def test_empty_setting_means_the_catalog_type_else_auto():
    assert inst.requested_type("", "proprietary") == "proprietary"
    assert inst.requested_type("open", "proprietary") == "open"
    assert inst.requested_type("", "") == "auto"


def test_argv_without_and_with_dkms(root):
    assert inst.installer_argv("/var/cache/grid-agent/x.run", "open", dkms=False) == [
        "sh", "/var/cache/grid-agent/x.run", "--silent", "--no-drm", "-M", "open",
        "--log-file-name=/var/log/nvidia-installer.log"]
    assert "--dkms" in inst.installer_argv("/x.run", "open", dkms=True)
    assert root.which("dkms") is None
    add_dkms(root, "/usr/local/sbin")
    assert root.which("dkms") is not None


def test_dkms_not_executable_does_not_count(root):
    add_dkms(root)
    root.path("/usr/sbin/dkms").chmod(0o644)
    assert root.which("dkms") is None


def test_run_installer_success_runs_a_private_verified_copy_with_timeout(root):
    add_dkms(root)
    runner = scripted(root)
    inst.run_installer(root, runner, cached(root), "proprietary", timeout=900)
    (argv,), (timeout,) = runner.calls, runner.timeouts
    assert argv[0] == "sh" and argv[1].startswith("/var/cache/grid-agent/.exec-")
    assert argv[1].endswith("/d.run")
    assert argv[2:6] == ["--silent", "--no-drm", "-M", "proprietary"]
    assert "--dkms" in argv and timeout == 900
    assert not root.path(argv[1]).parent.exists()  # the copy is gone after the run


def test_only_a_cache_entry_is_run(root):
    with pytest.raises(InstallError, match="only a verified installer"):
        inst.run_installer(root, scripted(root), "/tmp/d.run", "open", timeout=10)


def test_failure_surfaces_the_last_error_lines_of_this_runs_log(root):
    old = root.path(inst.INSTALLER_LOG)
    old.parent.mkdir(parents=True)
    old.write_text("ERROR: from an older attempt\n")
    runner = scripted(root, rc=1, log_text=LOG_FAIL)
    with pytest.raises(inst.InstallerFailed) as err:
        inst.run_installer(root, runner, cached(root), "proprietary", timeout=10)
    assert err.value.exit_code == 6
    assert "Unable to load the kernel module" in err.value.message
    assert "Installation has failed" in err.value.message
    assert "older attempt" not in err.value.message
    assert root.path(inst.INSTALLER_LOG + ".old").read_text() == "ERROR: from an older attempt\n"


def test_failure_without_a_log_uses_the_command_output(root):
    runner = scripted(root, rc=1, stdout="ERROR: no space left\n")
    with pytest.raises(inst.InstallerFailed, match="no space left"):
        inst.run_installer(root, runner, cached(root), "open", timeout=10)


def test_only_the_kernel_says_requires_open():
    assert inst.kernel_says_requires_open(NVRM)
    assert not inst.kernel_says_requires_open("NVRM: loading NVIDIA UNIX x86_64 Kernel Module")
    assert not inst.kernel_says_requires_open(LOG_FORCED)
    assert not hasattr(inst, "says_requires_open")


def test_recommended_type_is_the_answer_line_after_makeself_chatter(root):
    runner = scripted(root, stdout=RECOMMEND_OUT)
    run = cached(root)
    assert inst.recommended_module_type(root, runner, run, timeout=5) == "open"
    _sh, private, flag = runner.calls[0]
    assert private.startswith("/var/cache/grid-agent/.exec-")  # a verified private copy
    assert flag == "--print-recommended-kernel-module-type"
    assert inst.parse_recommendation("Uncompressing NVIDIA ... open source\n") is None
    assert inst.recommended_module_type(root, scripted(root, stdout="??"), run,
                                        timeout=5) is None


def test_an_installer_that_cannot_recommend_answers_none(root):
    runner = scripted(root, rc=1, stdout="ERROR: Invalid commandline\n")
    assert inst.recommended_module_type(root, runner, cached(root), timeout=5) is None


def test_host_path_of(root):
    assert inst.host_path_of(root, root.path("/var/cache/grid-agent/a.run")) == \
        "/var/cache/grid-agent/a.run"
    with pytest.raises(InstallError):
        inst.host_path_of(root, "/elsewhere/a.run")


def test_the_kernels_compiler_goes_in_the_installers_environment(root):
    runner = scripted(root)
    inst.run_installer(root, runner, cached(root), "open", timeout=10, cc="gcc-12")
    inst.run_installer(root, runner, cached(root), "open", timeout=10)
    assert runner.envs == [{"CC": "gcc-12", "MAKEFLAGS": "CC=gcc-12"}, {}]


def test_the_installer_log_is_written_privately_then_published(root, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:\n")

    def plant(argv):  # a syslog-group user plants a link at the log path meanwhile
        root.path(inst.INSTALLER_LOG).symlink_to(victim)

    root.path("/var/log").mkdir(parents=True)
    runner = scripted(root, rc=1, log_text=LOG_FAIL, before=plant)
    with pytest.raises(inst.InstallerFailed, match="Unable to load the kernel module"):
        inst.run_installer(root, runner, cached(root), "open", timeout=10)
    (argv,) = runner.calls
    assert argv[-1].startswith("--log-file-name=/var/cache/grid-agent/.exec-")
    assert victim.read_text() == "root:x:0:\n"  # the link was replaced, never written through
    published = root.path(inst.INSTALLER_LOG)
    assert not published.is_symlink() and published.read_text() == LOG_FAIL


BUILD_FAILED = """\
   CC [M]  /tmp/selfgz4242/NVIDIA-Linux-x86_64-535.261.03/kernel-open/nvidia/nv-pci.o
/tmp/selfgz4242/NVIDIA-Linux-x86_64-535.261.03/kernel-open/nvidia/nv-pci.c:223:9: error: \
too few arguments to function 'pci_resize_resource'
  223 |         r = pci_resize_resource(pci_dev, NV_GPU_BAR_INDEX_FB, requested_size);
/tmp/selfgz4242/NVIDIA-Linux-x86_64-535.261.03/kernel-open/nvidia/nv-pci.c:240:5: error: \
a later error
make[3]: *** [scripts/Makefile.build:250: nvidia/nv-pci.o] Error 1
ERROR: An error occurred while performing the step: "Building kernel modules". See \
/var/log/nvidia-installer.log for details.
"""


def test_a_failed_build_names_the_compilers_first_error_after_the_error_line():
    assert inst.error_lines(BUILD_FAILED) == [
        'ERROR: An error occurred while performing the step: "Building kernel modules". See '
        '/var/log/nvidia-installer.log for details.',
        "nv-pci.c:223:9: error: too few arguments to function 'pci_resize_resource'"]
    # Without an ERROR line the run did not fail by its own account: no cause is guessed.
    assert inst.error_lines(BUILD_FAILED.rsplit("ERROR:", 1)[0]) == []
    assert inst.error_lines("ERROR: Unable to load the kernel module 'nvidia.ko'.\n"
                            "make: *** No rule to make target 'x'.  Stop.\n") == [
        "ERROR: Unable to load the kernel module 'nvidia.ko'."]


def test_a_long_compiler_error_is_cut():
    line = "a.c:1:1: error: " + "x" * 1000
    assert len(inst.error_lines(f"{line}\nERROR: boom\n")[-1]) == inst.MAX_CAUSE
