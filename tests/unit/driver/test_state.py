"""Module state from sysfs/procfs files laid out under a HostRoot in tmp_path."""

from pathlib import Path

import pytest

from agent.driver.state import (
    BUILTIN,
    LIVE,
    Module,
    proc_version_info,
    read_module,
    read_module_state,
)
from agent.host.root import HostRoot
from tests.fakes.tree import Tree

PROPRIETARY = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.105.08  "
               "Wed Oct 29 23:15:00 UTC 2025\nGCC version:  gcc version 12.2.0\n")
OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.105.08  Release Build  "
        "(dvs-builder@U16-I3-B03-4-1)  Wed Oct 29 23:15:00 UTC 2025\n")


def write(root: Path, host_path: str, text: str) -> None:
    Tree(root).write(host_path, text)


def loaded_node(tmp_path: Path, proc: str = PROPRIETARY, refcnt: str = "3\n") -> HostRoot:
    write(tmp_path, "/sys/module/nvidia/version", "580.105.08\n")
    write(tmp_path, "/sys/module/nvidia/refcnt", refcnt)
    write(tmp_path, "/proc/driver/nvidia/version", proc)
    holders = tmp_path / "sys/module/nvidia/holders"
    holders.mkdir()
    for name in ("nvidia_uvm", "nvidia_modeset"):
        (tmp_path / "sys/module" / name).mkdir()
        (holders / name).symlink_to(f"../../{name}")
    return HostRoot(tmp_path)


def test_loaded_proprietary(tmp_path):
    state = read_module_state(loaded_node(tmp_path))
    assert state.loaded
    assert state.version == "580.105.08"
    assert state.module_type == "proprietary"
    assert state.refcnt == 3
    assert state.holders == ("nvidia_modeset", "nvidia_uvm")
    assert not state.nouveau_loaded


def test_loaded_open(tmp_path):
    state = read_module_state(loaded_node(tmp_path, proc=OPEN))
    assert state.module_type == "open"


def test_nothing_loaded(tmp_path):
    state = read_module_state(HostRoot(tmp_path))
    assert state.nvidia == Module("nvidia") and state.nouveau == Module("nouveau")
    assert (state.loaded, state.version, state.module_type, state.refcnt, state.holders,
            state.nouveau_loaded) == (False, None, None, None, (), False)


def test_nouveau_through_the_same_reader(tmp_path):
    (tmp_path / "sys/module/nouveau").mkdir(parents=True)
    assert not read_module_state(HostRoot(tmp_path)).nouveau_loaded  # an empty dir: gone
    write(tmp_path, "/sys/module/nouveau/refcnt", "1\n")
    assert read_module_state(HostRoot(tmp_path)).nouveau == Module("nouveau", LIVE, 1)


def test_builtin_code_is_loaded_but_has_no_refcnt(tmp_path):
    # A kernel with nouveau built in: the directory has parameters/, no refcnt or initstate.
    (tmp_path / "sys/module/nouveau/parameters").mkdir(parents=True)
    nouveau = read_module(HostRoot(tmp_path), "nouveau")
    assert (nouveau.state, nouveau.loaded, nouveau.builtin, nouveau.refcnt) == (
        BUILTIN, True, True, None)
    assert read_module_state(HostRoot(tmp_path)).nouveau_loaded


def test_version_falls_back_to_proc(tmp_path):
    write(tmp_path, "/sys/module/nvidia/refcnt", "0\n")
    write(tmp_path, "/proc/driver/nvidia/version", OPEN)
    state = read_module_state(HostRoot(tmp_path))
    assert (state.version, state.module_type, state.refcnt) == ("580.105.08", "open", 0)


@pytest.mark.parametrize(("text", "expected"), [
    (PROPRIETARY, ("580.105.08", "proprietary")),
    (OPEN, ("580.105.08", "open")),
    ("", (None, None)),
    (None, (None, None)),
    ("garbage\n", (None, None)),
])
def test_proc_version_info(text, expected):
    assert proc_version_info(text) == expected


def test_refcnt_and_loaded_by_name(tmp_path):
    root = loaded_node(tmp_path)
    write(tmp_path, "/sys/module/nvidia_uvm/refcnt", "0\n")
    assert read_module(root, "nvidia").refcnt == 3
    assert read_module(root, "nvidia-uvm") == Module("nvidia_uvm", LIVE, 0)
    assert read_module(root, "nvidia_drm") == Module("nvidia_drm")
    assert not read_module(root, "nvidia_drm").loaded


def test_refcnt_garbage_is_none(tmp_path):
    write(tmp_path, "/sys/module/nvidia/refcnt", "lots\n")
    assert read_module(HostRoot(tmp_path), "nvidia").refcnt is None


def test_initstate_coming_is_not_loaded(tmp_path):
    write(tmp_path, "/sys/module/nvidia/initstate", "coming\n")
    assert not read_module(HostRoot(tmp_path), "nvidia").loaded
    write(tmp_path, "/sys/module/nvidia/initstate", "live\n")
    assert read_module(HostRoot(tmp_path), "nvidia").loaded
