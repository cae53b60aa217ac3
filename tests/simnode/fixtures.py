"""pytest fixtures of the simulated node rig (registered in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.simnode.host import SimNode


@pytest.fixture
def simnode() -> Iterator[SimNode]:
    """A started simulated host (scenario `healthy`), SIGKILLed after the test."""
    node = SimNode().start()
    try:
        yield node
    finally:
        node.stop()
