"""vGPU type names as nvidia-smi reports them in `<product_name>` (pure parsing).

NVIDIA names a vGPU type `<board>-[<slices>-]<framebuffer GB><series>`: time-sliced
`NVIDIA RTX Pro 6000 Blackwell DC-3Q`, `...DC-48C`, MIG-backed `...DC-4-96Q` (4 compute
slices), older boards `GRID P4-1Q`, `NVIDIA L40S-24Q`, `NVIDIA A100-4-20C`. The series
letter is the suffix: Q (RTX Virtual Workstation), C (Virtual Compute Server),
B (Virtual PC), A (Virtual Applications).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SERIES = {"Q": "RTX Virtual Workstation", "C": "Virtual Compute Server",
          "B": "Virtual PC", "A": "Virtual Applications"}
# The last word: a board model (DC, P4, L40S, A100), then [slices-]framebuffer, then the series.
_TYPE = re.compile(r"(?P<model>[A-Za-z0-9]+)-(?:(?P<slices>\d+)-)?(?P<fb>\d+)(?P<series>[QCBA])")
_TARGET_BOARD = re.compile(r"\bRTX PRO 6000\b", re.IGNORECASE)


@dataclass(frozen=True)
class VgpuType:
    """One parsed vGPU type name."""

    name: str  # the whole product name, e.g. "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q"
    board: str  # "NVIDIA RTX Pro 6000 Blackwell"
    profile: str  # the last word, "DC-4-96Q": what GRID_AGENT_EXPECTED_PROFILE names
    series: str  # Q | C | B | A
    framebuffer_gb: int
    mig_slices: int | None  # compute slices of a MIG-backed type; None when time-sliced

    @property
    def mig_backed(self) -> bool:
        return self.mig_slices is not None

    @property
    def series_name(self) -> str:
        return SERIES[self.series]


def parse_vgpu_type(product_name: str | None) -> VgpuType | None:
    """The vGPU type in a product name, or None when it is not one (a bare GPU, N/A)."""
    name = " ".join((product_name or "").split())
    board, _, last = name.rpartition(" ")
    found = _TYPE.fullmatch(last)
    if not found or not board:
        return None
    slices = found.group("slices")
    return VgpuType(name=name, board=board, profile=last, series=found.group("series"),
                    framebuffer_gb=int(found.group("fb")),
                    mig_slices=int(slices) if slices is not None else None)


def is_target_type(vgpu: VgpuType | None) -> bool:
    """Any vGPU type of the RTX Pro 6000 (the default when no profile is pinned)."""
    return vgpu is not None and bool(_TARGET_BOARD.search(vgpu.board))


def profile_matches(product_name: str | None, expected: str) -> bool:
    """Empty: any RTX Pro 6000 vGPU type; else the full name or the profile part, exactly."""
    vgpu = parse_vgpu_type(product_name)
    want = expected.strip()
    if not want:
        return is_target_type(vgpu)
    name = " ".join((product_name or "").split())
    return name == want or (vgpu is not None and vgpu.profile == want)
