"""`detect`'s lines on the build's compiler and another NVIDIA driver (agent/install/outlook.py)."""

import json

import pytest

from agent.host.root import HostRoot
from agent.install.outlook import build_view
from tests.fakes.foreign import KERNEL, cuda_driver, write
from tests.fakes.settings import settings

GCC12 = 'CONFIG_CC_VERSION_TEXT="gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0"\n'


@pytest.fixture
def root(tmp_path):
    root = HostRoot(tmp_path)
    write(root, f"/usr/src/linux-headers-{KERNEL}/.config", GCC12)
    write(root, "/usr/bin/x86_64-linux-gnu-gcc-11", "#!/bin/sh\n", 0o755)
    root.path("/usr/bin/gcc").symlink_to("x86_64-linux-gnu-gcc-11")
    return root


def view(fp, root, **answer):
    fp.register(["nsenter", fp.any()], **answer)  # `uname -r` on the host, the only process
    return build_view(settings(host_root=root.root), root)


def test_a_gcc_11_host_with_a_cuda_driver(fp, root):
    cuda_driver(root)
    seen = view(fp, root, stdout=f"{KERNEL}\n")
    assert seen.lines() == [
        "compiler: kernel built by 'gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0'; the host's "
        "gcc is 11: CC=gcc-12 (apt-get install gcc-12)",
        "another NVIDIA driver: packages cuda-drivers-535, libnvidia-compute-535, "
        "nvidia-dkms-535, nvidia-driver-535, nvidia-kernel-common-535, nvidia-utils-535; DKMS "
        "nvidia/535.183.01; install would unload its module, remove its DKMS trees and "
        "modules, apt-get purge its packages when unused, else exit 6 naming it and its users"]
    data = json.loads(json.dumps(seen.as_dict()))
    assert data["build"] == {
        "kernel_release": KERNEL,
        "kernel_compiler": "gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0", "host_gcc": "11",
        "cc": "gcc-12", "installs_compiler": True, "reason": seen.lines()[0]}
    assert data["foreign_driver"]["dkms_versions"] == ["535.183.01"]
    assert data["foreign_driver"]["install_would"].startswith("unload its module")
    assert fp.call_count(["nsenter", fp.any()]) == 1


def test_a_clean_host_and_an_unknown_kernel(fp, root):
    seen = view(fp, root, returncode=1, stderr="nsenter: Operation not permitted")
    compiler, other = seen.lines()
    assert compiler.startswith("compiler: unknown (cannot ask the host for its kernel release: ")
    assert other == "another NVIDIA driver: none"
    assert seen.as_dict()["build"] is None and seen.as_dict()["foreign_driver"] is None
