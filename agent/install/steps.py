"""The install's steps, declared once (Ansible check mode): `install` walks each step's act,
`install --dry-run` walks each step's look. A look is a pure function of Facts read once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.catalog import known_bad_kernel
from agent.driver.foreign import ForeignDriver
from agent.driver.snapshot import Snapshot
from agent.errors import AgentError, InstallError
from agent.host.paths import CACHE_DIR, GRIDD_CONF, RECORD
from agent.install import inplace, moduletype, prebuild, upgrade
from agent.install import installer as inst
from agent.install.compiler import CompilerOutlook
from agent.install.flow import Flow
from agent.install.foreign import removal
from agent.install.modules import DriverInUse, in_use_reasons
from agent.install.pin import Pin, fast_path_refusal, install_reason, nvidia_ko_built
from agent.install.verify import verify_snapshot
from agent.vgpu import HostVgpuFacts

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Facts:
    """What the looks judge, read once and read-only: the node's Snapshot and a few files."""

    snapshot: Snapshot  # with uname -r, nvidia-smi and the hand-off
    pin: Pin
    targets: tuple[str, ...]
    install_reason: str | None  # why the installer must run; None: built for this kernel
    headers: bool  # linux-headers for the running kernel present
    cached: bool  # the pinned .run is in the host cache
    gridd_conf: bool  # /etc/nvidia/gridd.conf exists
    prebuilt: bool = False  # this pin's modules were prebuilt for the running kernel
    host_vgpu: HostVgpuFacts | None = None  # the hypervisor's vGPU manager vs the pin
    pending_kernels: tuple[str, ...] = ()  # "release (why)" of kernels waiting for a prebuild
    reboot_sentinel: str = ""  # set: a busy old driver stages the upgrade instead of exit 6
    drift: Mapping[str, str] = field(default_factory=dict)  # inplace.drift: {step: why}
    compiler: CompilerOutlook | None = None  # the build's compiler (None: kernel unknown)
    foreign: ForeignDriver = field(default_factory=ForeignDriver)  # another NVIDIA driver

    @property
    def kernel_release(self) -> str:
        return self.snapshot.kernel_release or ""

    @property
    def fast_refusal(self) -> str | None:
        return fast_path_refusal(self.snapshot, self.pin, self.targets, prebuilt=self.prebuilt)


@dataclass(frozen=True)
class Look:
    acts: bool  # would this step change the host
    why: str


@dataclass(frozen=True)
class Step:
    name: str
    look: Callable[[Facts], Look]
    act: Callable[[Flow], bool]  # True when it changed the host
    full_path: bool = True  # skipped when the fast path was taken
    fast_only: bool = False  # run only when the fast path was taken
    rescue: Callable[[Flow, AgentError], None] | None = None  # may finish the step another way


# -- fast path -------------------------------------------------------------------------------


def look_fast_path(facts: Facts) -> Look:
    why = facts.fast_refusal
    if why is None:
        # The fast path never removes anything; `check` warns about a foreign driver.
        other = (f"; another NVIDIA driver ({facts.foreign.describe()}) is left alone"
                 if facts.foreign else "")
        return Look(False, f"{facts.pin.release.version} loaded, recorded and working: "
                           f"only (re)publish{other}")
    return Look(False, f"not taken: {why}")


def act_fast_path(flow: Flow) -> bool:
    """One look at the node (uname -r, nvidia-smi, -q -x); takes the fast path or not."""
    snap = flow.snapshot(kernel=True)
    flow.seen, flow.kernel_release = snap, snap.kernel_release or ""
    why = fast_path_refusal(snap, flow.pin, flow.targets,
                            prebuilt=prebuild.built_for(flow.root, flow.pin, flow.kernel_release))
    if why is not None:
        log.info("fast_path_declined", reason=why)
        return False
    flow.module_type = snap.record.module_type if snap.record else ""
    flow.verified = verify_snapshot(snap, flow.expect())
    flow.fast = True
    log.info("fast_path_taken", version=flow.pin.release.version)
    return False


# -- the full path ---------------------------------------------------------------------------


def look_preflight(facts: Facts) -> Look:
    """The checks, and what the host's files already tell: its vGPU manager, its kernel."""
    notes = ["check OS, Secure Boot, /run propagation, headers, disk"]
    host = facts.host_vgpu
    if host is None or host.host is None:
        notes.append("host vGPU manager unknown")
    else:
        notes.append(f"host vGPU manager {host.host.version}: pin {host.level}")
    notes += [f"kernel {facts.kernel_release} known bad ({bad.advice})"
              for bad in known_bad_kernel(facts.kernel_release)]
    return Look(False, "; ".join(notes))


def act_preflight(flow: Flow) -> bool:
    found = flow.kit.preflight(flow.settings, flow.root, flow.runner)
    flow.kernel_release = found.kernel_release
    record = flow.seen.record if flow.seen else None
    flow.install_reason = install_reason(
        record, flow.pin, flow.kernel_release, nvidia_ko_built(flow.root, flow.kernel_release),
        prebuilt=prebuild.built_for(flow.root, flow.pin, flow.kernel_release))
    if flow.install_reason is None and record is not None:
        flow.module_type = record.module_type
    return False


def look_download(facts: Facts) -> Look:
    release = facts.pin.release
    if facts.install_reason is None:
        return Look(False, "not needed: this pin is built for this kernel")
    if facts.cached:
        return Look(False, f"{release.filename} cached (sha256 checked on use)")
    return Look(True, f"{release.shown_url} into {CACHE_DIR} "
                      f"(sha256 {release.sha256 or 'unpinned'})")


def act_download(flow: Flow) -> bool:
    if flow.install_reason is None:
        log.info("installer_not_needed", reason="this pin is built for this kernel")
        return False
    cache = flow.root.path(CACHE_DIR)
    before = set(cache.rglob("*.run")) if cache.is_dir() else set()
    path = Path(flow.kit.ensure_installer(flow.pin.release, flow.root, flow.settings))
    flow.run_path = inst.host_path_of(flow.root, path)
    return path not in before


def look_packages(facts: Facts) -> Look:
    why = (f"linux-headers-{facts.kernel_release} "
           f"{'present' if facts.headers else 'missing: apt-get install'}")
    outlook = facts.compiler
    if facts.install_reason is None or outlook is None:
        return Look(not facts.headers, why)  # nothing to build: no compiler chosen
    if not facts.headers:
        return Look(True, f"{why}; compiler: the one their .config names")
    return Look(outlook.installs, f"{why}; {outlook.describe()}")


def act_packages(flow: Flow) -> bool:
    changed = flow.kit.ensure_build_deps(flow.root, flow.runner, flow.kernel_release,
                                         lock_wait=flow.settings.dpkg_lock_wait)
    if flow.install_reason is None:
        return changed  # nothing to build
    # With the headers in place: the kernel's own compiler (compiler.py).
    choice = flow.kit.ensure_compiler(flow.root, flow.runner, flow.kernel_release,
                                      lock_wait=flow.settings.dpkg_lock_wait)
    flow.cc = choice.cc
    return changed or choice.changed


def look_stale_unload(facts: Facts) -> Look:
    state = facts.snapshot.modules
    rebuild = facts.install_reason is not None
    other = (f"another NVIDIA driver ({facts.foreign.describe()}): {removal(facts.foreign)}"
             if facts.foreign else "")
    if not state.loaded or (state.version == facts.pin.module_version and not rebuild):
        return Look(bool(other), other or "no NVIDIA module in the installer's way")
    users = f"refcnt {state.refcnt}" + (f", holders {', '.join(state.holders)}"
                                        if state.holders else "")
    sentinel = facts.reboot_sentinel
    busy = (f"else stage the upgrade ({sentinel} for the reboot coordinator) and wait"
            if sentinel else "else reboot required")
    return Look(True, f"driver {state.version} is loaded ({users}): unload if unused, {busy}"
                + (f"; {other}" if other else ""))


def act_stale_unload(flow: Flow) -> bool:
    # A busy old driver with a reboot coordinator: stage before touching anything, so
    # the running driver keeps its hand-off until the reboot (upgrade.py).
    _stage_if_busy(flow)
    # From here on the driver may change: withdraw the hand-off first, so no operator
    # pod trusts a marker while verification of the new driver has not passed.
    withdrawn = flow.kit.remove_marker(flow.root)
    # Another NVIDIA driver installation (packages, DKMS): removed when unused, else
    # exit 6 naming it (foreign.py).
    foreign = flow.kit.remove_foreign(flow.root, flow.runner, flow.pin.module_version,
                                      lock_wait=flow.settings.dpkg_lock_wait)
    # The installer cannot replace a loaded module, even one of the same version (a
    # module type change, a rebuild): then no loaded version is wanted ("").
    want = "" if flow.install_reason else flow.pin.module_version
    try:
        unloaded = flow.kit.unload_stale(flow.root, flow.runner, want_version=want)
    except DriverInUse as exc:
        if not flow.settings.reboot_sentinel or not flow.run_path:
            raise  # today's exit 6: a person drains and reboots
        _stage(flow, exc.message)  # users came between the look above and the unload
    return withdrawn or foreign or unloaded


def _stage_if_busy(flow: Flow) -> None:
    if not flow.settings.reboot_sentinel or not flow.run_path or flow.install_reason is None:
        return
    users = in_use_reasons(flow.root)
    if users:
        _stage(flow, f"the loaded NVIDIA driver is in use ({'; '.join(users)}); it cannot "
                     f"be replaced by {flow.pin.module_version} while running")


def _stage(flow: Flow, reason: str) -> None:
    sentinel = flow.settings.reboot_sentinel
    info = upgrade.stage(flow.root, flow.runner, sentinel=sentinel, pin=flow.pin,
                         run_path=flow.run_path, reason=reason)
    raise upgrade.Staged(upgrade.staged_line(info))


def look_nouveau(facts: Facts) -> Look:
    nouveau = facts.snapshot.modules.nouveau
    if nouveau.builtin:
        return Look(True, "nouveau is built into this kernel: reboot required")
    if nouveau.loaded:
        return Look(True, "nouveau loaded: blacklist and unload")
    return Look(False, "make sure nouveau stays blacklisted")


def act_nouveau(flow: Flow) -> bool:
    outcome = flow.kit.ensure_nouveau_disabled(flow.root, flow.runner)
    if outcome.reboot_required:
        raise InstallError(f"reboot required: {outcome.reason}",
                           remedy="reboot the node; the agent finishes after the reboot")
    return outcome.changed


def look_installer(facts: Facts) -> Look:
    why = facts.install_reason
    if why is None:
        return Look(False, f"{facts.pin.release.version} already built for "
                           f"{facts.kernel_release}")
    kind = facts.pin.requested
    if kind == "auto":
        kind = "the installer's recommended"
    return Look(True, f"{why}: run {facts.pin.release.version} with {kind} kernel modules "
                      "(-M), --silent --no-drm")


def act_installer(flow: Flow) -> bool:
    if flow.install_reason is None:
        return False
    log.info("installer_needed", reason=flow.install_reason)
    flow.choice = moduletype.choose(flow)
    return moduletype.install(flow, flow.choice.module_type)


def look_load(facts: Facts) -> Look:
    return Look(True, "modprobe -a nvidia nvidia-uvm nvidia-modeset; device nodes")


def act_load(flow: Flow) -> bool:
    """Load the stack; a proprietary module that loads but cannot drive the GPU is a failure."""
    changed = flow.kit.load_modules(flow.root, flow.runner)
    moduletype.refuse_gpuless_proprietary(flow)
    return changed


def look_persistence(facts: Facts) -> Look:
    return Look(True, "make sure nvidia-persistenced is enabled and running")


def act_persistence(flow: Flow) -> bool:
    return flow.kit.ensure_persistenced(flow.root, flow.runner)


def look_licensing(facts: Facts) -> Look:
    if facts.gridd_conf:
        return Look(False, "gridd.conf present; make sure nvidia-gridd runs")
    return Look(True, f"create {GRIDD_CONF} from the template; start gridd")


def act_licensing(flow: Flow) -> bool:
    conf = flow.kit.ensure_gridd_conf(flow.root)
    running = flow.kit.ensure_gridd_running(flow.root, flow.runner)
    return conf or running


def look_verify(facts: Facts) -> Look:
    return Look(False, "the driver checks on a fresh snapshot: module loaded and of the "
                       "installed type, nvidia-smi exit 0, its report lists the target GPUs")


def act_verify(flow: Flow) -> bool:
    """The driver checks on a fresh snapshot; the first failure raises (exit 7)."""
    flow.verified = verify_snapshot(flow.snapshot(), flow.expect())
    return False


# -- the fast path's in-place changes ----------------------------------------------------------


def look_in_place(facts: Facts) -> Look:
    if not facts.drift:
        return Look(False, "gridd.conf and persistence as last applied")
    return Look(True, "; ".join(f"{step}: {why}" for step, why in facts.drift.items()))


def act_in_place(flow: Flow) -> bool:
    """gridd.conf or persistence changed: only their steps run, the modules are untouched."""
    found = inplace.drift(flow.root)
    if not found:
        return False
    log.info("config_changed_in_place", changes=found)
    changed = False
    if inplace.LICENSING in found:
        changed = act_licensing(flow) or changed
    if inplace.PERSISTENCE in found:
        changed = act_persistence(flow) or changed
    return changed


# -- after either path -----------------------------------------------------------------------


def look_publish(facts: Facts) -> Look:
    handoff = facts.snapshot.handoff
    if handoff is None or handoff.intact:
        return Look(False, "mount and marker in place")
    return Look(True, f"after verification: {handoff.reason}")


def act_publish(flow: Flow) -> bool:
    # Only after verification passed (fast path or full): the operator may now trust it.
    return flow.kit.publish(flow.root, flow.runner)


def look_record(facts: Facts) -> Look:
    return Look(True, f"write {RECORD}")


def act_record(flow: Flow) -> bool:
    changed = flow.record("fast_path" if flow.fast else "installed", 0)
    upgrade.clear(flow.root, flow.pin.digest)  # a staged upgrade (if any) is done
    return changed


def look_prebuild(facts: Facts) -> Look:
    if not facts.pending_kernels:
        return Look(False, "no installed kernel waits for this pin's modules")
    return Look(True, "build for " + ", ".join(facts.pending_kernels)
                + " with --kernel-modules-only, niced")


def act_prebuild(flow: Flow) -> bool:
    # Kernels installed but not running get this pin's modules now (never fatal).
    return prebuild.after_install(flow)


STEPS: tuple[Step, ...] = (
    Step("fast_path", look_fast_path, act_fast_path, full_path=False),
    Step("preflight", look_preflight, act_preflight),
    Step("download", look_download, act_download),
    Step("packages", look_packages, act_packages),
    Step("stale_unload", look_stale_unload, act_stale_unload),
    Step("nouveau", look_nouveau, act_nouveau),
    # The requires-open fallback (moduletype.py) may finish either step with open modules.
    Step("installer", look_installer, act_installer, rescue=moduletype.open_instead),
    Step("load", look_load, act_load,
         rescue=lambda flow, exc: moduletype.open_instead(flow, exc, load=act_load)),
    Step("persistence", look_persistence, act_persistence),
    Step("licensing", look_licensing, act_licensing),
    Step("verify", look_verify, act_verify),
    Step("in_place", look_in_place, act_in_place, full_path=False, fast_only=True),
    Step("publish", look_publish, act_publish, full_path=False),
    Step("record", look_record, act_record, full_path=False),
    Step("prebuild", look_prebuild, act_prebuild, full_path=False),
)


def applies(step: Step, fast: bool) -> bool:
    """The one rule both walks follow: the full-path steps are skipped on the fast path,
    the fast-path-only steps off it."""
    return not (fast and step.full_path) and not (step.fast_only and not fast)
