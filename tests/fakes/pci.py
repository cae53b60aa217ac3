"""The PCI functions tests use: the target vGPU (10de:2bb5, subsystem 1414:2187) and an H100."""

from agent.pci import PciDevice, PciId, TargetSpec

TARGET = PciDevice("0000:00:02.0", 0x10DE, 0x2BB5, 0x1414, 0x2187, 0x030200, "nvidia")
H100 = PciDevice("0000:00:03.0", 0x10DE, 0x2330, 0x10DE, 0x16C1, 0x030200, None)
SPEC = TargetSpec(ids=(PciId(0x10DE, 0x2BB5),), subsystems=())
