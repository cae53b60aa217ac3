import pytest

from agent.pci import PciDevice, PciId, TargetSpec, detect, parse_id_list

TARGET = PciId(0x10DE, 0x2BB5)


def dev(slot="0000:00:02.0", vendor=0x10DE, device=0x2BB5, sub=(0x1414, 0x2187),
        klass=0x030200, driver=None):
    return PciDevice(slot, vendor, device, sub[0], sub[1], klass, driver)


def test_parse_id_list_accepts_commas_spaces_and_case():
    assert parse_id_list("10DE:2bb5, 10de:2330") == (TARGET, PciId(0x10DE, 0x2330))
    assert parse_id_list("  ") == ()


@pytest.mark.parametrize("bad", ["10de", "10de:2bb5x", "0x10de:2bb5", "zzzz:2bb5"])
def test_parse_id_rejects_malformed(bad):
    with pytest.raises(ValueError, match="not a PCI id"):
        PciId.parse(bad)


def test_target_matches_3d_and_vga_but_not_other_classes():
    spec = TargetSpec(ids=(TARGET,))
    assert spec.matches(dev(klass=0x030200))
    assert spec.matches(dev(klass=0x030000))
    assert not spec.matches(dev(klass=0x040300))


def test_h100_is_not_a_target():
    assert not TargetSpec(ids=(TARGET,)).matches(dev(device=0x2330, sub=(0x10DE, 0x16C1)))


def test_subsystem_filter_is_optional():
    assert TargetSpec(ids=(TARGET,)).matches(dev(sub=(0x10DE, 0x0001)))
    strict = TargetSpec(ids=(TARGET,), subsystems=(PciId(0x1414, 0x2187),))
    assert strict.matches(dev())
    assert not strict.matches(dev(sub=(0x10DE, 0x0001)))
    assert not strict.matches(PciDevice("0000:00:02.0", 0x10DE, 0x2BB5, None, None, 0x030200, None))


def test_detect_splits_nvidia_and_targets_in_slot_order():
    nic = dev(slot="0000:00:01.0", vendor=0x1AF4, device=0x1041)
    h100 = dev(slot="0000:00:03.0", device=0x2330)
    second, first = dev(slot="0000:00:05.0"), dev(slot="0000:00:04.0")
    found = detect([nic, h100, second, first], TargetSpec(ids=(TARGET,)))
    assert [d.slot for d in found.nvidia] == ["0000:00:03.0", "0000:00:04.0", "0000:00:05.0"]
    assert found.targets == (first, second)
    assert found.is_target_node


def test_detect_without_target():
    assert not detect([dev(device=0x2330)], TargetSpec(ids=(TARGET,))).is_target_node


def test_as_dict_is_json_friendly():
    assert dev(driver="nvidia").as_dict() == {
        "slot": "0000:00:02.0", "pci_id": "10de:2bb5", "subsystem_id": "1414:2187",
        "pci_class": "0x030200", "driver": "nvidia",
    }
