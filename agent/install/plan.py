"""`--dry-run`: which steps would act and why, from read-only looks at the host."""

from __future__ import annotations

from dataclasses import dataclass

from agent.catalog import known_bad_kernel
from agent.driver.record import read_record
from agent.handoff import inspect_handoff
from agent.host.paths import CACHE_DIR, GRIDD_CONF, RECORD
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import inplace, prebuild
from agent.install import installer as inst
from agent.install.cache import cached_path
from agent.install.kit import Kit
from agent.install.pin import resolve_pin
from agent.install.pipeline import Flow, gate
from agent.settings import Settings
from agent.vgpu import host_vgpu_facts


@dataclass(frozen=True)
class PlanItem:
    step: str
    acts: bool  # would this step change the host
    why: str

    def line(self) -> str:
        return f"{'act ' if self.acts else 'skip'}  {self.step:<13} {self.why}"


def _handoff_item(root: HostRoot) -> PlanItem:
    handoff = inspect_handoff(root)
    if handoff.intact:
        return PlanItem("publish", False, "mount and marker in place")
    return PlanItem("publish", True, f"after verification: {handoff.reason}")


def _stale_item(flow: Flow) -> PlanItem:
    state = flow.kit.module_state(flow.root)
    rebuild = flow.install_reason is not None
    if not state.loaded or (state.version == flow.pin.module_version and not rebuild):
        return PlanItem("stale_unload", False, "no NVIDIA module in the installer's way")
    users = f"refcnt {state.refcnt}" + (f", holders {', '.join(state.holders)}"
                                        if state.holders else "")
    busy = (f"else stage the upgrade ({flow.settings.reboot_sentinel} for the reboot "
            "coordinator) and wait" if flow.settings.reboot_sentinel else "else reboot required")
    return PlanItem("stale_unload", True,
                    f"driver {state.version} is loaded ({users}): unload if unused, {busy}")


def _in_place_item(flow: Flow) -> PlanItem:
    found = inplace.drift(flow.root)
    if not found:
        return PlanItem("in_place", False, "gridd.conf and persistence as last applied")
    return PlanItem("in_place", True, "; ".join(f"{step}: {why}" for step, why in found.items()))


def _prebuild_item(flow: Flow) -> PlanItem:
    record = read_record(flow.root)
    running = flow.kernel_release or (record.kernel_release if record else "")
    pending = prebuild.Prebuilder(flow.settings, flow.root, flow.runner, flow.kit,
                                  flow.pin).wanted(running) if running else []
    if not pending:
        return PlanItem("prebuild", False, "no installed kernel waits for this pin's modules")
    return PlanItem("prebuild", True, "build for " + ", ".join(
        f"{k.release} ({k.why})" for k in pending) + " with --kernel-modules-only, niced")


def _installer_item(flow: Flow) -> PlanItem:
    why = flow.install_reason
    if why is None:
        return PlanItem("installer", False,
                        f"{flow.pin.release.version} already built for {flow.kernel_release}")
    kind = flow.pin.requested
    if kind == "auto":
        kind = "the installer's recommended"
    return PlanItem("installer", True, f"{why}: run {flow.pin.release.version} with "
                                       f"{kind} kernel modules (-M), --silent --no-drm")


def _download_item(flow: Flow) -> PlanItem:
    release = flow.pin.release
    if flow.install_reason is None:
        return PlanItem("download", False, "not needed: this pin is built for this kernel")
    if release.sha256 and cached_path(flow.root, release.sha256, release.filename).is_file():
        return PlanItem("download", False, f"{release.filename} cached (sha256 checked on use)")
    return PlanItem("download", True, f"{release.shown_url} into {CACHE_DIR} "
                                      f"(sha256 {release.sha256 or 'unpinned'})")


def _preflight_item(flow: Flow) -> PlanItem:
    """The checks, and what the host's files already tell: its vGPU manager, its kernel."""
    notes = ["check OS, Secure Boot, /run propagation, headers, disk"]
    facts = host_vgpu_facts(flow.root, flow.pin.release.version)
    if facts.host is None:
        notes.append("host vGPU manager unknown")
    else:
        notes.append(f"host vGPU manager {facts.host.version}: pin {facts.level}")
    notes += [f"kernel {flow.kernel_release} known bad ({bad.advice})"
              for bad in known_bad_kernel(flow.kernel_release or "")]
    return PlanItem("preflight", False, "; ".join(notes))


def _full_items(flow: Flow) -> list[PlanItem]:
    root = flow.root
    flow.kernel_release = flow.kernel_release or flow.kit.kernel_release(flow.runner)
    flow.install_reason = flow.installed_on_disk()  # once: it reads the record and /lib/modules
    headers = flow.kit.headers_present(root, flow.kernel_release)
    state = flow.kit.module_state(root)
    gridd = root.exists(GRIDD_CONF)
    return [
        _preflight_item(flow),
        _download_item(flow),
        PlanItem("packages", not headers,
                 f"linux-headers-{flow.kernel_release} "
                 f"{'present' if headers else 'missing: apt-get install'}"),
        _stale_item(flow),
        PlanItem("nouveau", state.nouveau_loaded,
                 "nouveau loaded: blacklist and unload" if state.nouveau_loaded
                 else "make sure nouveau stays blacklisted"),
        _installer_item(flow),
        PlanItem("load", True, "modprobe -a nvidia nvidia-uvm nvidia-modeset; device nodes"),
        PlanItem("persistence", True, "make sure nvidia-persistenced is enabled and running"),
        PlanItem("licensing", not gridd, "gridd.conf present; make sure nvidia-gridd runs"
                 if gridd else "create /etc/nvidia/gridd.conf from the template; start gridd"),
        PlanItem("verify", False, "nvidia-smi exit 0, -q -x report, loaded version and type"),
    ]


def make_plan(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit) -> list[PlanItem]:
    """The steps `install` would take now, changing nothing (host commands are read-only)."""
    why = gate(settings, kit)
    if why is not None:
        return [PlanItem("gate", False, f"not a target node, nothing to do: {why}")]
    flow = Flow(settings, root, runner, kit, resolve_pin(settings, kit))
    items = [PlanItem("gate", False, "target GPU present")]
    refusal = flow.fast_path_refusal()
    if refusal is None:
        items.append(PlanItem("fast_path", False,
                              f"{flow.pin.release.version} loaded and recorded: verify, "
                              "then only (re)publish"))
        items.append(_in_place_item(flow))
    else:
        items.append(PlanItem("fast_path", False, f"not taken: {refusal}"))
        items += _full_items(flow)
    items.append(_handoff_item(root))
    items.append(PlanItem("record", True, f"write {RECORD}"))
    items.append(_prebuild_item(flow))
    return items


def format_plan(items: list[PlanItem]) -> str:
    header = f"plan (dry run, nothing changed; module type variable {inst.MODULE_TYPE_VAR}):"
    return "\n".join([header, *(f"  {item.line()}" for item in items)])
