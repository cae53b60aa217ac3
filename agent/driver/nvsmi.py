"""nvidia-smi: run it on the host and parse `-q -x`, tolerant of what varies between releases."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import structlog

from agent.driver.profile import parse_vgpu_type
from agent.errors import HostCommandError, HostCommandMissing, HostCommandTimeout, last_lines
from agent.host.runner import HostRunner

log = structlog.get_logger(__name__)

SMI = "nvidia-smi"
_ROOT_TAG = "nvidia_smi_log"
_XML_START = re.compile(r"<\?xml|<!DOCTYPE|<nvidia_smi_log\b")


class NvsmiParseError(ValueError):
    """The output is not a usable nvidia-smi XML report; the message is the reason."""


@dataclass(frozen=True)
class GpuReport:
    pci_bus_id: str  # as nvidia-smi writes it, e.g. 00000000:00:02.0
    product_name: str | None
    pci_device_id: str | None  # e.g. 2BB510DE (no 0x in the XML)
    pci_sub_system_id: str | None
    virtualization_mode: str | None  # None | Pass-Through | VGPU
    mig_current: str | None  # Enabled | Disabled | N/A
    mig_pending: str | None
    license_status: str | None  # e.g. "Licensed (Expiry: 2026-7-7 16:1:44 GMT)"
    licensed_product: str | None
    persistence_mode: str | None = None  # Enabled | Disabled

    @property
    def slot(self) -> str:
        """The bus id in sysfs/udev form (`0000:00:02.0`), for matching against PCI detection."""
        return pci_slot(self.pci_bus_id)


@dataclass(frozen=True)
class NvsmiReport:
    driver_version: str  # the first token; the KMD version when R610+ reports one
    cuda_version: str | None
    gpus: tuple[GpuReport, ...]


@dataclass(frozen=True)
class SmiOutcome:
    exit_code: int  # of plain `nvidia-smi`, the GPU Operator validator's own check
    output: str  # its stdout and stderr
    report: NvsmiReport | None  # the parsed `nvidia-smi -q -x`, when it parsed
    reason: str | None  # why it is not healthy; None when exit 0 and a report
    xml_reason: str | None = None  # why `-q -x` gave no report (None when it parsed)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.report is not None


def pci_slot(bus_id: str) -> str:
    """`00000000:00:02.0` -> `0000:00:02.0`; anything unexpected is returned lower-cased."""
    found = re.fullmatch(r"([0-9A-Fa-f]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+)\.([0-7])", bus_id.strip())
    if not found:
        return bus_id.strip().lower()
    dom, bus, dev, fn = (int(part, 16) for part in found.groups())
    return f"{dom:04x}:{bus:02x}:{dev:02x}.{fn:x}"


def profile_of(product_name: str | None) -> str | None:
    """The vGPU profile in a product name: `NVIDIA RTX Pro 6000 Blackwell DC-4-96Q` -> DC-4-96Q."""
    vgpu = parse_vgpu_type(product_name)
    return vgpu.profile if vgpu else None


def _text(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = " ".join(found.text.split())
    return value or None


def _token(value: str | None) -> str | None:
    # R610 text output appends "[Deprecated; ...]": the version is the first token.
    return value.split()[0] if value else None


def _xml_body(text: str) -> str:
    start = _XML_START.search(text)
    if start is None:
        first = last_lines(text.strip().splitlines()[0], 1) if text.strip() else ""
        raise NvsmiParseError(f"no XML report: {first or 'empty output'}")
    body = text[start.start():]
    if "<!ENTITY" in body:
        # A report never declares entities; refuse rather than expand them.
        raise NvsmiParseError("XML report declares entities")
    return body


def _gpu(node: ET.Element) -> GpuReport:
    bus_id = node.get("id") or _text(node, "pci/pci_bus_id") or ""
    lic = node.find("vgpu_software_licensed_product")
    return GpuReport(
        pci_bus_id=bus_id,
        product_name=_text(node, "product_name"),
        pci_device_id=(_text(node, "pci/pci_device_id") or "").upper() or None,
        pci_sub_system_id=(_text(node, "pci/pci_sub_system_id") or "").upper() or None,
        virtualization_mode=_text(node, "gpu_virtualization_mode/virtualization_mode"),
        mig_current=_text(node, "mig_mode/current_mig"),
        mig_pending=_text(node, "mig_mode/pending_mig"),
        license_status=_text(lic, "license_status"),
        licensed_product=_text(lic, "licensed_product_name"),
        persistence_mode=_text(node, "persistence_mode"),
    )


def parse_report(xml_text: str) -> NvsmiReport:
    """The report in `nvidia-smi -q -x` output; NvsmiParseError with a reason otherwise."""
    body = _xml_body(xml_text)
    try:
        # expat never fetches the DOCTYPE's DTD, and entity declarations were refused above.
        tree = ET.fromstring(body)  # noqa: S314
    except ET.ParseError as exc:
        raise NvsmiParseError(f"malformed XML report: {exc}") from None
    if tree.tag != _ROOT_TAG:
        raise NvsmiParseError(f"unexpected XML root <{tree.tag}>, not <{_ROOT_TAG}>")
    version = _token(_text(tree, "kmd_version")) or _token(_text(tree, "driver_version"))
    if version is None or version == "N/A":
        raise NvsmiParseError("XML report has no driver version")
    gpus = tuple(_gpu(node) for node in tree.findall("gpu"))
    return NvsmiReport(version, _token(_text(tree, "cuda_version")), gpus)


def _run(runner: HostRunner, argv: list[str], timeout: float | None) -> tuple[int, str, str]:
    """(exit code, output, reason-if-it-could-not-run); never raises for a failing command."""
    try:
        result = runner.run(argv, timeout=timeout, check=False)
    except HostCommandTimeout as exc:
        return 124, exc.stdout + exc.stderr, f"`{' '.join(argv)}` timed out"
    except HostCommandMissing as exc:
        return 127, "", exc.message
    except HostCommandError as exc:
        return 127, exc.stdout + exc.stderr, f"`{' '.join(argv)}` could not run: {exc.message}"
    return result.returncode, result.stdout + result.stderr, ""


def run_smi(runner: HostRunner, *, timeout: float | None = None) -> SmiOutcome:
    """`nvidia-smi` (must exit 0, as the validator requires), then `nvidia-smi -q -x` parsed."""
    code, output, why = _run(runner, [SMI], timeout)
    reasons = [why] if why else []
    if code != 0 and not why:
        tail = last_lines(output, 2)
        reasons.append(f"nvidia-smi exited {code}" + (f": {tail}" if tail else ""))
    report, xml_reason = None, None
    if code == 124:  # a hung driver would hang -q -x too
        xml_reason = "not run: nvidia-smi timed out"
    else:
        xcode, xml_out, xwhy = _run(runner, [SMI, "-q", "-x"], timeout)
        try:
            report = parse_report(xml_out)
        except NvsmiParseError as exc:
            xml_reason = xwhy or f"nvidia-smi -q -x (exit {xcode}): {exc}"
    if xml_reason and not reasons:
        reasons.append(xml_reason)
    outcome = SmiOutcome(code, output, report, "; ".join(reasons) or None, xml_reason)
    log.debug("nvidia_smi", exit_code=code, parsed=report is not None, reason=outcome.reason)
    return outcome
