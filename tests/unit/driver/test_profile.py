"""Real vGPU type names (NVIDIA's naming: board, [slices-]framebuffer, series suffix)."""

import pytest

from agent.driver.profile import is_target_type, parse_vgpu_type, profile_matches

# (product name as nvidia-smi reports it, profile part, series, framebuffer GB, MIG slices)
REAL_NAMES = [
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "DC-4-96Q", "Q", 96, 4),
    ("NVIDIA RTX Pro 6000 Blackwell DC-1-24Q", "DC-1-24Q", "Q", 24, 1),
    ("NVIDIA RTX Pro 6000 Blackwell DC-2-48C", "DC-2-48C", "C", 48, 2),
    ("NVIDIA RTX Pro 6000 Blackwell DC-3Q", "DC-3Q", "Q", 3, None),
    ("NVIDIA RTX Pro 6000 Blackwell DC-48C", "DC-48C", "C", 48, None),
    ("NVIDIA RTX Pro 6000 Blackwell DC-96A", "DC-96A", "A", 96, None),
    ("GRID P4-1Q", "P4-1Q", "Q", 1, None),
    ("GRID M60-0B", "M60-0B", "B", 0, None),
    ("NVIDIA L40S-24Q", "L40S-24Q", "Q", 24, None),
    ("NVIDIA L40S-2Q", "L40S-2Q", "Q", 2, None),
    ("NVIDIA A16-2B", "A16-2B", "B", 2, None),
    ("NVIDIA A100-4-20C", "A100-4-20C", "C", 20, 4),
    ("NVIDIA A10-24Q", "A10-24Q", "Q", 24, None),
]


@pytest.mark.parametrize(("name", "profile", "series", "fb", "slices"), REAL_NAMES)
def test_real_type_names_parse(name, profile, series, fb, slices):
    vgpu = parse_vgpu_type(name)
    assert vgpu is not None
    assert (vgpu.profile, vgpu.series, vgpu.framebuffer_gb, vgpu.mig_slices) == (
        profile, series, fb, slices)
    assert vgpu.mig_backed is (slices is not None)
    assert vgpu.board == name.rsplit(" ", 1)[0]


@pytest.mark.parametrize("name", [
    "NVIDIA H100 80GB HBM3",  # a whole GPU, not a vGPU type
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "NVIDIA RTX Pro 6000 Blackwell DC-4-96X",  # no such series
    "DC-4-96Q",  # no board
    "N/A", "", None,
])
def test_not_a_vgpu_type(name):
    assert parse_vgpu_type(name) is None


def test_series_names_and_target_board():
    vgpu = parse_vgpu_type("NVIDIA RTX Pro 6000 Blackwell DC-48C")
    assert vgpu.series_name == "Virtual Compute Server" and is_target_type(vgpu)
    assert not is_target_type(parse_vgpu_type("GRID P4-1Q"))
    assert not is_target_type(None)


@pytest.mark.parametrize(("name", "expected", "ok"), [
    # Empty: any vGPU type of the RTX Pro 6000, time-sliced or MIG-backed, any series.
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "", True),
    ("NVIDIA RTX PRO 6000 Blackwell DC-1-24Q", "", True),
    ("NVIDIA RTX Pro 6000 Blackwell DC-3Q", "", True),
    ("NVIDIA RTX Pro 6000 Blackwell DC-48C", "", True),
    ("GRID P4-1Q", "", False),
    ("NVIDIA H100 80GB HBM3", "", False),
    (None, "", False),
    # Pinned: the profile part or the whole name, exactly.
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "DC-4-96Q", True),
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", " DC-4-96Q ", True),
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", True),
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "DC-2-48Q", False),
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "DC-4-96C", False),
    ("NVIDIA RTX Pro 6000 Blackwell DC-4-96Q", "96Q", False),  # not a substring match
    ("NVIDIA RTX Pro 6000 Blackwell DC-48C", "DC-4-8C", False),
    ("NVIDIA RTX Pro 6000 Blackwell DC-3Q", "DC-3Q", True),
    ("GRID P4-1Q", "P4-1Q", True),
    (None, "DC-4-96Q", False),
])
def test_expected_profile(name, expected, ok):
    assert profile_matches(name, expected) is ok
