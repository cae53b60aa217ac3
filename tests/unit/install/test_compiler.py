import pytest

from agent.errors import PreflightError
from agent.host.root import HostRoot
from agent.install import compiler as cc
from tests.fakes.runner import FakeRunner

RELEASE = "6.8.0-1030-azure"
# The first lines of a real build tree's .config (Debian's 6.1 headers on this machine).
CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.140 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
CONFIG_CC_IS_GCC=y
CONFIG_GCC_VERSION=120200
"""
GCC11 = "gcc (Debian 11.3.0-12) 11.3.0\nCopyright (C) 2021 Free Software Foundation, Inc.\n"
GCC12 = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022 Free Software Foundation.\n"


def gcc_host(stdout):
    """The host answering `gcc --version` (stdout None: it has no gcc)."""
    if stdout is None:
        return FakeRunner().on(fails="missing")
    return FakeRunner().on(stdout=stdout)


@pytest.fixture
def root(tmp_path):
    root = HostRoot(tmp_path)
    build = root.path(f"/usr/src/linux-headers-{RELEASE}")
    build.mkdir(parents=True)
    (build / ".config").write_text(CONFIG)
    link = root.path(f"/lib/modules/{RELEASE}/build")
    link.parent.mkdir(parents=True)
    link.symlink_to(f"/usr/src/linux-headers-{RELEASE}")
    return root


def add_command(root, name):
    path = root.path(f"/usr/bin/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("text", "family", "version", "major"), [
    ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "gcc", "12.2.0", 12),
    ("x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0", "gcc", "12.3.0", 12),
    ("gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0", "gcc", "11.4.0", 11),
    ("cc (Debian 11.3.0-12) 11.3.0", "gcc", "11.3.0", 11),
    ("Ubuntu clang version 14.0.0-1ubuntu1.1", "clang", "14.0.0", 14),
])
def test_parse_compiler(text, family, version, major):
    found = cc.parse_compiler(text)
    assert (found.family, found.version, found.major) == (family, version, major)


@pytest.mark.parametrize("text", ["", "no version here"])
def test_unparseable_compiler_text_is_none(text):
    assert cc.parse_compiler(text) is None


def test_kernel_compiler_reads_the_build_trees_config(root):
    assert cc.kernel_compiler(root, RELEASE).text == "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert cc.kernel_compiler(root, "6.99.0-1-none") is None


def test_needed_cc():
    gcc12 = cc.parse_compiler("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
    gcc11 = cc.parse_compiler("gcc (Debian 11.3.0-12) 11.3.0")
    assert cc.needed_cc(gcc12, gcc11) == "gcc-12"
    assert cc.needed_cc(gcc12, None) == "gcc-12"
    assert cc.needed_cc(gcc12, cc.parse_compiler("gcc (Debian 12.3.0-1) 12.3.0")) is None
    assert cc.needed_cc(None, gcc11) is None
    assert cc.needed_cc(cc.parse_compiler("Ubuntu clang version 18.1.3"), gcc11) is None


def test_installer_env_reaches_kbuild_through_makeflags():
    assert cc.installer_env("gcc-12") == {"CC": "gcc-12", "MAKEFLAGS": "CC=gcc-12"}
    assert cc.installer_env(None) == {}


def test_same_major_keeps_the_hosts_compiler_and_installs_nothing(root):
    installs = []
    choice = cc.ensure_kernel_compiler(root, gcc_host(GCC12), RELEASE, install=installs.append)
    assert (choice.cc, choice.changed, installs) == (None, False, [])


def test_a_present_gcc_12_is_used_without_apt(root):
    add_command(root, "gcc-12")
    installs = []
    choice = cc.ensure_kernel_compiler(root, gcc_host(GCC11), RELEASE, install=installs.append)
    assert (choice.cc, choice.changed, installs) == ("gcc-12", False, [])


def test_a_missing_gcc_12_is_installed(root):
    def install(pkgs):
        assert pkgs == ["gcc-12"]
        add_command(root, "gcc-12")

    choice = cc.ensure_kernel_compiler(root, gcc_host(GCC11), RELEASE, install=install)
    assert (choice.cc, choice.changed) == ("gcc-12", True)


def test_no_gcc_on_the_host_at_all_still_asks_for_the_kernels(root):
    add_command(root, "gcc-12")
    choice = cc.ensure_kernel_compiler(root, gcc_host(None), RELEASE, install=list)
    assert choice.cc == "gcc-12"


def test_a_compiler_that_cannot_be_had_is_exit_4_naming_it(root):
    def install(pkgs):
        raise PreflightError("cannot install gcc-12: apt-get cannot reach the package mirror")

    with pytest.raises(PreflightError) as err:
        cc.ensure_kernel_compiler(root, gcc_host(GCC11), RELEASE, install=install)
    assert err.value.exit_code == 4
    assert "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0" in err.value.message
    assert "its compiler gcc-12 cannot be installed" in err.value.message
    assert "apt-get install gcc-12" in err.value.remedy


def test_apt_without_the_command_afterwards_is_exit_4(root):
    with pytest.raises(PreflightError, match="no gcc-12 command"):
        cc.ensure_kernel_compiler(root, gcc_host(GCC11), RELEASE, install=lambda pkgs: None)


def test_no_record_in_the_build_tree_changes_nothing(tmp_path):
    runner = gcc_host(GCC11)
    choice = cc.ensure_kernel_compiler(HostRoot(tmp_path), runner, RELEASE, install=list)
    assert choice.cc is None and runner.calls == []


def link_gcc(root, *chain):
    """/usr/bin/gcc -> chain[0] -> ... -> a regular executable named chain[-1]."""
    add_command(root, chain[-1])
    for name, target in zip(("gcc", *chain), chain, strict=False):
        root.path(f"/usr/bin/{name}").symlink_to(target)


@pytest.mark.parametrize(("name", "major"), [
    ("x86_64-linux-gnu-gcc-11", 11), ("gcc-12", 12), ("aarch64-linux-gnu-gcc-13", 13),
    ("gcc", None), ("x86_64-linux-gnu-gcc", None), ("clang-14", None)])
def test_gcc_named(name, major):
    found = cc.gcc_named(name)
    assert (found.major if found else None) == major


def test_outlook_the_kernels_gcc_missing_from_a_gcc_11_host(root):
    link_gcc(root, "gcc-11", "x86_64-linux-gnu-gcc-11")  # Ubuntu 22.04's links
    seen = cc.compiler_outlook(root, RELEASE)
    assert (seen.cc, seen.cc_present, seen.installs) == ("gcc-12", False, True)
    assert seen.describe() == ("compiler: kernel built by 'gcc-12 (Debian 12.2.0-14+deb12u1) "
                               "12.2.0'; the host's gcc is 11: CC=gcc-12 (apt-get install gcc-12)")
    add_command(root, "gcc-12")
    seen = cc.compiler_outlook(root, RELEASE)
    assert (seen.cc, seen.installs) == ("gcc-12", False)
    assert seen.describe().endswith("CC=gcc-12 (present)")


def test_outlook_the_hosts_own_gcc_is_the_kernels(root):
    link_gcc(root, "gcc-12", "x86_64-linux-gnu-gcc-12")
    seen = cc.compiler_outlook(root, RELEASE)
    assert (seen.cc, seen.installs) == (None, False)
    assert seen.describe().endswith("the host's gcc is 12, the same")


@pytest.mark.parametrize(("setup", "says"), [
    (lambda root: None, "no gcc on the host: apt-get install gcc, then gcc-12 if its default"),
    (lambda root: add_command(root, "gcc"), "names no version (the install asks `gcc --version`"),
])
def test_outlook_without_a_gcc_to_compare_decides_nothing(root, setup, says):
    setup(root)
    seen = cc.compiler_outlook(root, RELEASE)
    assert (seen.cc, seen.installs) == (None, False) and says in seen.describe()


def test_outlook_of_a_kernel_without_a_record(root):
    link_gcc(root, "gcc-11")
    root.path(f"/usr/src/linux-headers-{RELEASE}/.config").write_text("CONFIG_CC_IS_GCC=y\n")
    seen = cc.compiler_outlook(root, RELEASE)
    assert seen.cc is None and "records none" in seen.describe()

