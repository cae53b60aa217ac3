import pytest

from agent import handoff as pub
from agent.errors import InstallError
from agent.host.root import HostRoot
from tests.fakes.runner import RBIND, mounting_runner

BASE = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n"
)


@pytest.fixture
def host(tmp_path):
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/mountinfo").write_text(BASE)
    return HostRoot(tmp_path), mounting_runner(tmp_path / "proc/1/mountinfo")


def test_publish_mounts_then_marks_and_is_idempotent(host):
    root, runner = host
    assert not pub.inspect_handoff(root).intact
    assert pub.publish(root, runner) is True
    assert runner.calls == [["mount", "--rbind", "/", "/run/nvidia/driver"]]
    assert root.read_text(pub.MARKER) == pub.MARKER_CONTENT
    assert pub.inspect_handoff(root).intact
    assert pub.publish(root, runner) is False
    assert len(runner.calls) == 1


def test_existing_mount_point_is_left_alone_and_dir_never_recreated(host):
    root, runner = host
    root.path(pub.DRIVER_ROOT).mkdir(parents=True)
    inode = root.path(pub.DRIVER_ROOT).stat().st_ino
    root.path("/proc/1/mountinfo").write_text(BASE + RBIND)
    assert pub.publish(root, runner) is True  # only the marker was missing
    assert runner.calls == []
    assert root.path(pub.DRIVER_ROOT).stat().st_ino == inode


def test_reboot_empties_run_and_publish_restores_both(host):
    root, runner = host
    pub.publish(root, runner)
    root.path(pub.MARKER).unlink()
    root.path("/proc/1/mountinfo").write_text(BASE)
    handoff = pub.inspect_handoff(root)
    assert "missing" in handoff.reason and "not a mount" in handoff.reason
    assert pub.publish(root, runner) is True
    assert pub.inspect_handoff(root).intact


def test_a_mount_of_something_else_is_not_the_host_root(host):
    root, _ = host
    other = "31 25 0:99 / /run/nvidia/driver rw - tmpfs tmpfs rw\n"
    root.path("/proc/1/mountinfo").write_text(BASE + other)
    assert not pub.inspect_handoff(root).mounted


@pytest.mark.parametrize(("text", "valid"), [
    ("", True),
    (pub.MARKER_CONTENT, True),
    ("# comment\nGDS_ENABLED: true\n", True),
    ("GDS_ENABLED: yes-please\n", False),
    ("ready\n", False),
])
def test_marker_validation_matches_the_validator_yaml_bool_map(text, valid):
    assert pub.marker_is_valid(text) is valid


def test_run_must_be_shared():
    assert pub.run_is_shared(BASE)
    assert not pub.run_is_shared(BASE.replace("shared:5", "master:3"))
    assert not pub.run_is_shared("")


def test_unpublish_removes_marker_then_lazily_unmounts(host):
    root, runner = host
    pub.publish(root, runner)
    assert pub.unpublish(root, runner) is True
    assert runner.calls[-1] == ["umount", "--lazy", "/run/nvidia/driver"]
    assert not root.path(pub.MARKER).exists()
    assert root.path(pub.DRIVER_ROOT).is_dir()
    assert pub.unpublish(root, runner) is False


TMPFS = "40 25 0:99 / /run/nvidia/driver rw - tmpfs tmpfs rw\n"


@pytest.fixture
def stack(tmp_path):
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/mountinfo").write_text(BASE)
    (tmp_path / "run").mkdir()
    return HostRoot(tmp_path), mounting_runner(tmp_path / "proc/1/mountinfo")


@pytest.mark.parametrize("target", ["/srv/elsewhere", "/"])
def test_a_link_at_the_driver_root_is_replaced_never_followed(stack, target):
    root, runner = stack
    root.path("/srv/elsewhere").mkdir(parents=True)
    root.path("/run/nvidia").mkdir()
    root.path(pub.DRIVER_ROOT).symlink_to(target)
    assert pub.publish(root, runner) is True
    driver = root.path(pub.DRIVER_ROOT)
    assert driver.is_dir() and not driver.is_symlink()
    assert runner.calls == [["mount", "--rbind", "/", "/run/nvidia/driver"]]
    for _ in range(3):  # idempotent: never mounts again
        assert pub.publish(root, runner) is False
    assert len(runner.calls) == 1 and pub.inspect_handoff(root).intact
    assert list(root.path("/srv/elsewhere").iterdir()) == []


def test_a_foreign_mount_is_refused_and_the_marker_withdrawn(stack):
    root, runner = stack
    root.path("/proc/1/mountinfo").write_text(BASE + TMPFS)
    root.write_file(pub.MARKER, pub.MARKER_CONTENT)  # left from an earlier hand-off
    with pytest.raises(InstallError, match=r"foreign tmpfs mount .* at /run/nvidia/driver") as err:
        pub.publish(root, runner)
    assert err.value.exit_code == 6 and "umount -R /run/nvidia/driver" in err.value.line()
    assert runner.calls == []  # nothing stacked on it
    assert root.read_text(pub.MARKER) is None
    with pytest.raises(InstallError):
        pub.publish(root, runner)
    assert runner.calls == []
    assert pub.unpublish(root, runner) is False and runner.calls == []  # not ours: kept


def test_our_bind_over_a_foreign_mount_is_refused_too(stack):
    root, runner = stack
    root.path("/proc/1/mountinfo").write_text(BASE + TMPFS + RBIND)
    with pytest.raises(InstallError, match="foreign tmpfs"):
        pub.publish(root, runner)


def test_binds_stacked_by_an_older_agent_are_taken_down_to_one(stack):
    root, runner = stack
    root.path("/proc/1/mountinfo").write_text(BASE + RBIND * 3)
    assert pub.publish(root, runner) is True
    assert runner.calls == [["umount", "--lazy", "/run/nvidia/driver"]] * 2
    assert root.path("/proc/1/mountinfo").read_text().count(RBIND) == 1
    assert pub.publish(root, runner) is False


def test_a_linked_run_nvidia_is_refused(stack):
    root, runner = stack
    root.path("/srv/nv").mkdir(parents=True)
    root.path("/run/nvidia").symlink_to("/srv/nv")
    with pytest.raises(InstallError, match=r"/run/nvidia is a symbolic link \(to /srv/nv\)"):
        pub.publish(root, runner)
    assert runner.calls == [] and list(root.path("/srv/nv").iterdir()) == []


def test_a_file_at_the_driver_root_is_refused(stack):
    root, runner = stack
    root.path("/run/nvidia").mkdir()
    root.path(pub.DRIVER_ROOT).write_text("")
    with pytest.raises(InstallError, match="/run/nvidia/driver is not a directory"):
        pub.publish(root, runner)
    assert runner.calls == []
