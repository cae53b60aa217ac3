"""Unit tier: no real process may start by accident."""

import pytest


@pytest.fixture(autouse=True)
def _no_real_processes(fp):
    """pytest-subprocess's fp makes every unregistered command fail the test."""
    fp.allow_unregistered(False)
    return fp
