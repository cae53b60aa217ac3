"""nvidia-smi output fixtures (tests/unit/driver/fixtures), by name."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "driver" / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()
