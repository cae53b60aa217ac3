"""pytest fixtures of the simulated node rig (registered in tests/conftest.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simnode.driver_run import build_fake_run
from tests.simnode.host import SimNode


@pytest.fixture
def simnode() -> Iterator[SimNode]:
    """A started simulated host (scenario `healthy`), SIGKILLed after the test."""
    node = SimNode().start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake GRID `.run` (real makeself; its .ko files from one kbuild per session)."""
    return build_fake_run(tmp_path_factory.mktemp("fake-run"))


@pytest.fixture(scope="session")
def fake_run_sha256(fake_run: Path) -> str:
    return hashlib.sha256(fake_run.read_bytes()).hexdigest()
