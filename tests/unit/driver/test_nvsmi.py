"""nvidia-smi -q -x parsing over many variants, and run_smi's outcomes."""

import pytest

from agent.driver.nvsmi import NvsmiParseError, parse_report, pci_slot, run_smi
from tests.fakes.runner import smi_runner
from tests.fakes.smi import fixture

HEALTHY = ["healthy-v13.xml", "healthy-v12.xml", "healthy-v11.xml", "no-doctype.xml",
           "whitespace.xml", "unknown-elements.xml", "prose-before-xml.xml",
           "deprecated-suffix.xml"]


@pytest.mark.parametrize("name", HEALTHY)
def test_variants_parse_to_the_same_gpu(name):
    report = parse_report(fixture(name))
    assert len(report.gpus) == 1
    gpu = report.gpus[0]
    assert gpu.pci_bus_id == "00000000:00:02.0"
    assert gpu.slot == "0000:00:02.0"
    assert gpu.product_name == "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q"
    assert gpu.pci_device_id == "2BB510DE"
    assert gpu.pci_sub_system_id == "21871414"
    assert gpu.virtualization_mode == "VGPU"
    assert (gpu.mig_current, gpu.mig_pending) == ("Enabled", "Enabled")
    assert gpu.license_status == "Licensed (Expiry: 2026-7-7 16:1:44 GMT)"
    assert gpu.licensed_product == "NVIDIA RTX Virtual Workstation"
    assert gpu.persistence_mode == "Enabled"


def test_versions():
    assert parse_report(fixture("healthy-v13.xml")).driver_version == "580.105.08"
    assert parse_report(fixture("healthy-v13.xml")).cuda_version == "13.0"
    assert parse_report(fixture("healthy-v12.xml")).driver_version == "550.144.06"
    assert parse_report(fixture("healthy-v11.xml")).driver_version == "535.216.01"
    assert parse_report(fixture("whitespace.xml")).driver_version == "580.105.08"
    assert parse_report(fixture("deprecated-suffix.xml")).driver_version == "580.105.08"


def test_r610_prefers_kmd_version():
    xml = fixture("r610-kmd.xml").replace("<kmd_version>610.20.01", "<kmd_version>610.20.02")
    assert parse_report(xml).driver_version == "610.20.02"
    assert parse_report(fixture("r610-kmd.xml")).driver_version == "610.20.01"


@pytest.mark.parametrize(("name", "status"), [
    ("unlicensed.xml", "Unlicensed"),
    ("unlicensed-restricted.xml", "Unlicensed (Restricted)"),
    ("unlicensed-unrestricted.xml", "Unlicensed (Unrestricted)"),
    ("license-unknown.xml", "Unknown"),
    ("license-na.xml", "N/A"),
    ("licensed-permanent.xml", "Licensed (Expiry: Permanent)"),
])
def test_license_status_kept_verbatim(name, status):
    assert parse_report(fixture(name)).gpus[0].license_status == status


def test_two_gpus():
    report = parse_report(fixture("two-gpus.xml"))
    assert [g.slot for g in report.gpus] == ["0000:00:02.0", "0000:00:03.0"]
    assert report.gpus[1].license_status == "Unlicensed (Restricted)"


def test_no_gpus_is_a_report():
    assert parse_report(fixture("no-gpus.xml")).gpus == ()


def test_other_fields():
    assert parse_report(fixture("mig-disabled.xml")).gpus[0].mig_current == "Disabled"
    assert parse_report(fixture("mig-na.xml")).gpus[0].mig_current == "N/A"
    assert parse_report(fixture("passthrough.xml")).gpus[0].virtualization_mode == "Pass-Through"


@pytest.mark.parametrize(("name", "reason"), [
    ("prose-no-driver.txt", "no XML report: NVIDIA-SMI has failed because it couldn't"),
    ("prose-no-devices.txt", "no XML report: No devices were found"),
    ("prose-mismatch.txt", "no XML report: Failed to initialize NVML"),
    ("empty.txt", "no XML report: empty output"),
    ("truncated.xml", "malformed XML report"),
    ("wrong-root.xml", "unexpected XML root <something_else>"),
    ("entities.xml", "declares entities"),
    ("no-driver-version.xml", "no driver version"),
])
def test_failures_are_reasons(name, reason):
    with pytest.raises(NvsmiParseError, match=reason.replace("(", r"\(")):
        parse_report(fixture(name))


def test_parse_error_is_a_value_error():
    assert issubclass(NvsmiParseError, ValueError)


@pytest.mark.parametrize(("bus_id", "slot"), [
    ("00000000:00:02.0", "0000:00:02.0"),
    ("0000:3B:00.1", "0000:3b:00.1"),
    ("weird", "weird"),
])
def test_pci_slot(bus_id, slot):
    assert pci_slot(bus_id) == slot


def test_run_smi_healthy():
    runner = smi_runner()
    outcome = run_smi(runner, timeout=7)
    assert outcome.ok and outcome.exit_code == 0 and outcome.reason is None
    assert outcome.report.driver_version == "580.105.08"
    assert "Driver Version: 580.105.08" in outcome.output
    assert runner.calls == [["nvidia-smi"], ["nvidia-smi", "-q", "-x"]]
    assert runner.timeouts == [7, 7]


def test_run_smi_exit_14_still_parses_xml():
    outcome = run_smi(smi_runner(plain_code=14, plain_out="WARNING: infoROM is corrupted\n"))
    assert not outcome.ok
    assert outcome.exit_code == 14
    assert outcome.report is not None
    assert outcome.reason == "nvidia-smi exited 14: WARNING: infoROM is corrupted"


def test_run_smi_prose():
    prose = fixture("prose-no-driver.txt")
    outcome = run_smi(smi_runner(plain_code=9, plain_out=prose, xml_code=9, xml_out=prose))
    assert outcome.report is None
    assert outcome.reason.startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")
    assert outcome.reason == ("nvidia-smi exited 9: NVIDIA-SMI has failed because it couldn't "
                              "communicate with the NVIDIA driver. Make sure that the latest "
                              "NVIDIA driver is installed and running.")
    assert outcome.xml_reason.startswith("nvidia-smi -q -x (exit 9): no XML report: NVIDIA-SMI")


def test_run_smi_bad_xml_with_exit_0():
    outcome = run_smi(smi_runner(xml_out=fixture("truncated.xml")))
    assert outcome.exit_code == 0 and not outcome.ok
    assert "malformed XML report" in outcome.reason
    assert outcome.reason == outcome.xml_reason


def test_run_smi_timeout_does_not_try_xml():
    runner = smi_runner(fails="timeout")
    outcome = run_smi(runner, timeout=1)
    assert outcome.exit_code == 124
    assert outcome.reason == "`nvidia-smi` timed out"
    assert outcome.xml_reason == "not run: nvidia-smi timed out"
    assert len(runner.calls) == 1


def test_run_smi_missing_binary():
    outcome = run_smi(smi_runner(fails="missing"))
    assert outcome.exit_code == 127
    assert "could not run" in outcome.reason and outcome.report is None


def test_run_smi_r610_table_and_kmd_report():
    # R610 prints "KMD Version" and a deprecated "Driver Version" in the table; the version
    # always comes from the XML report, never from the table's prose.
    runner = smi_runner(plain_out=fixture("smi-table-r610.txt"), xml_out=fixture("r610-kmd.xml"))
    outcome = run_smi(runner)
    assert outcome.ok and outcome.report.driver_version == "610.20.01"
    assert "[Deprecated; use KMD Version]" in outcome.output
