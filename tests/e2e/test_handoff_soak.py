"""The hand-off never stacks: `watch` self-heal cycles against a hostile driver root (a link
to `/`, a link to a directory, a foreign tmpfs) keep the host's mount count constant.
The 200-cycle version with RSS figures is `scripts/bench soak`."""

import os

import pytest

from agent.host.paths import DRIVER_ROOT, MARKER
from tests.e2e.installrun import host_text, run_agent
from tests.e2e.soak import HOSTILE, soak

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


@pytest.mark.parametrize("how", HOSTILE)
def test_watch_self_heal_never_stacks_a_mount(simnode, catalog, tmp_path, how):
    assert run_agent(simnode.agent_args(), catalog, "install").returncode == 0
    result = soak(simnode, catalog, tmp_path, how=how, cycles=20)
    assert result.constant, result
    assert result.crashes == 0, result
    driver = simnode.path(DRIVER_ROOT)
    assert driver.is_dir() and not driver.is_symlink()
    if how == "tmpfs":
        assert result.mounts_first == result.mounts_before  # refused: nothing mounted
        assert result.heals["refused"] >= 10 and "published" not in result.heals
        assert host_text(simnode, MARKER) is None  # never over the foreign tree
    else:
        assert result.heals.get("published", 0) >= 2, result  # healed again and again...
        assert result.mounts_first > result.mounts_before  # ...after one real mount
    if how == "link-to-dir":
        assert os.listdir(simnode.path("/srv/decoy")) == []
