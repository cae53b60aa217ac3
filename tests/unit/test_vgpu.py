"""The host's vGPU manager from PCI config space (NVIDIA vgpu-util's layout), and the pin rule."""

from pathlib import Path

import pytest

from agent.host.root import HostRoot
from agent.vgpu import (
    BEHIND,
    OK,
    REFUSE,
    UNKNOWN,
    ConfigSpaceError,
    HostVgpu,
    judge_guest,
    parse_config,
    read_host_vgpu,
    remedy_for,
    vendor_capability,
)
from tests.fakes.pci_config import config_space, host_record, record


def test_a_vgpu_names_its_host_driver_version_and_branch():
    host = parse_config(config_space(), "0000:00:02.0")
    assert host == HostVgpu("595.58.02", "R595", "0000:00:02.0")
    assert host.vgpu_release == 20
    assert host.as_dict() == {"version": "595.58.02", "branch": "R595",
                              "slot": "0000:00:02.0", "vgpu_release": 20}


def test_the_record_walk_skips_other_records_and_upper_cases_like_vgpu_util():
    body = record(3, b"abc") + record(1, b"\x00" * 6) + host_record("580.105.06", "r580_00")
    assert parse_config(config_space(records=body)) == HostVgpu("580.105.06", "R580_00")


def test_a_passthrough_gpu_has_no_vgpu_capability():
    assert parse_config(config_space(vgpu=False)) is None
    assert parse_config(config_space(cap_list=False)) is None
    assert parse_config(config_space(signature=b"XX")) is None


def test_an_unprivileged_read_is_too_short_to_tell():
    with pytest.raises(ConfigSpaceError, match="only 64 of 256 config-space bytes"):
        parse_config(config_space(size=64))


def test_a_capability_loop_ends_the_walk():
    cfg = bytearray(config_space(vgpu=False))
    cfg[0x51] = 0x40  # MSI points back at power management
    assert vendor_capability(bytes(cfg)) is None


def test_a_broken_chain_ends_the_walk():
    cfg = bytearray(config_space())
    cfg[0x50] = 0xFF
    assert parse_config(bytes(cfg)) is None


@pytest.mark.parametrize("body", [
    record(1, b"\x00\x00"),  # no host record at all
    bytes([1, 0, 0, 0]),  # a zero-length record (vgpu-util would spin)
    bytes([0, 22]) + b"595.58",  # a host record cut short
])
def test_no_usable_host_record(body):
    with pytest.raises(ConfigSpaceError, match="no host driver version record"):
        parse_config(config_space(records=body))


def sysfs(root: Path, slot: str, vendor: str, config: bytes | None) -> None:
    dev = root / "sys/bus/pci/devices" / slot
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    if config is not None:
        (dev / "config").write_bytes(config)


def test_read_through_the_host_root_finds_the_first_vgpu(tmp_path):
    sysfs(tmp_path, "0000:00:01.0", "0x1af4", b"\0" * 256)
    sysfs(tmp_path, "0000:00:02.0", "0x10de", config_space())
    host, why = read_host_vgpu(HostRoot(tmp_path))
    assert (host, why) == (HostVgpu("595.58.02", "R595", "0000:00:02.0"), "")


def test_unknown_host_version_says_why(tmp_path):
    assert read_host_vgpu(HostRoot(tmp_path))[1].startswith("cannot list /sys/bus/pci/devices")
    sysfs(tmp_path, "0000:00:02.0", "0x10de", config_space(vgpu=False))
    sysfs(tmp_path, "0000:00:03.0", "0x10de", config_space(size=64))
    sysfs(tmp_path, "0000:00:04.0", "0x10de", None)
    host, why = read_host_vgpu(HostRoot(tmp_path))
    assert host is None
    assert why == ("0000:00:02.0: no vGPU capability in its config space; "
                   "0000:00:03.0: only 64 of 256 config-space bytes readable (needs privilege); "
                   "0000:00:04.0: No such file or directory")


HOST20 = HostVgpu("595.58.02", "R595")


@pytest.mark.parametrize(("guest", "host", "level"), [
    ("595.58.03-grid-azure", HOST20, OK),
    ("580.105.08-grid-azure", HOST20, BEHIND),
    ("570.195.03-grid-azure", HOST20, REFUSE),
    ("595.58.03-grid-azure", HostVgpu("580.105.06", "R580"), REFUSE),
    ("580.105.08-grid-azure", None, UNKNOWN),
    ("610.10-grid-azure", HOST20, UNKNOWN),
    ("580.105.08-grid-azure", HostVgpu("BOGUS", ""), UNKNOWN),
])
def test_guest_against_host(guest, host, level):
    assert judge_guest(guest, host)[0] == level


def test_reasons_name_both_sides():
    assert judge_guest("580.105.08-grid-azure", HOST20)[1] == (
        "guest driver 580.105.08-grid-azure (vGPU 19), host vGPU manager 595.58.02 (vGPU 20): "
        "one branch behind, supported until the host moves again")
    assert "newer than the host" in judge_guest("595.58.03", HostVgpu("580.86", "R580"))[1]


def test_remedy_names_the_catalog_entry_of_the_hosts_branch():
    assert remedy_for(HOST20) == ("set GRID_AGENT_DRIVER_VERSION=595.58.03-grid-azure "
                                  "(vGPU 20, the host's)")
    assert "vGPU 18" in remedy_for(HostVgpu("570.195", "R570"))
