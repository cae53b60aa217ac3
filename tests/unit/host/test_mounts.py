from agent.host.mounts import covering_mount, parse_mountinfo, top_mount_at

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n"
    "26 25 0:24 / /run/user/1000 rw - tmpfs tmpfs rw\n"
    "30 22 8:1 /srv /mnt/with\\040space rw - ext4 /dev/sda1 rw\n"
    "31 25 8:1 / /run/nvidia/driver rw shared:1 - ext4 /dev/sda1 rw\n"
    "garbage line\n"
)


def test_parse_fields_and_escapes():
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 5
    spaced = mounts[3]
    assert spaced.mount_point == "/mnt/with space"
    assert spaced.fs_root == "/srv"
    assert mounts[1].shared and not mounts[2].shared


def test_covering_mount_is_the_longest_prefix():
    mounts = parse_mountinfo(MOUNTINFO)
    assert covering_mount(mounts, "/run").mount_point == "/run"
    assert covering_mount(mounts, "/run/nvidia").mount_point == "/run"
    assert covering_mount(mounts, "/running").mount_point == "/"
    assert covering_mount(mounts, "/run/user/1000/x").mount_point == "/run/user/1000"


def test_top_mount_is_the_last_one_stacked():
    text = MOUNTINFO + "40 31 0:50 / /run/nvidia/driver rw - tmpfs tmpfs rw\n"
    assert top_mount_at(parse_mountinfo(text), "/run/nvidia/driver").fstype == "tmpfs"
    assert top_mount_at(parse_mountinfo(text), "/nowhere") is None
