"""`--dry-run`: which steps would act and why, from read-only looks at the host."""

from __future__ import annotations

from dataclasses import dataclass

from agent.host.paths import GRIDD_CONF
from agent.host.root import HostRoot
from agent.host.runner import HostRunner
from agent.install import inplace, prebuild
from agent.install import installer as inst
from agent.install.cache import cached_path
from agent.install.kit import Kit
from agent.install.outlook import build_outlook
from agent.install.pin import install_reason, nvidia_ko_built, resolve_pin
from agent.install.pipeline import gate
from agent.install.steps import STEPS, Facts, applies
from agent.settings import Settings
from agent.vgpu import host_vgpu_facts


@dataclass(frozen=True)
class PlanItem:
    step: str
    acts: bool  # would this step change the host
    why: str

    def line(self) -> str:
        return f"{'act ' if self.acts else 'skip'}  {self.step:<13} {self.why}"


def read_facts(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit,
               targets: tuple[str, ...]) -> Facts:
    """One read-only look: the same snapshot the fast path takes, and file reads (no more
    host processes: the compiler and a foreign driver are judged from files)."""
    pin = resolve_pin(settings, kit)
    snap = kit.snapshot(root, runner, kernel=True, handoff=True,
                        timeout=settings.command_timeout)
    kernel = snap.kernel_release or ""
    release = pin.release
    prebuilt = prebuild.built_for(root, pin, kernel)
    compiler, foreign = build_outlook(root, kernel, pin.module_version, snap.record)
    return Facts(
        snapshot=snap, pin=pin, targets=targets,
        install_reason=install_reason(snap.record, pin, kernel, nvidia_ko_built(root, kernel),
                                      prebuilt=prebuilt),
        headers=kit.headers_present(root, kernel),
        cached=release.sha256 is not None
        and cached_path(root, release.sha256, release.filename).is_file(),
        gridd_conf=root.exists(GRIDD_CONF),
        prebuilt=prebuilt,
        host_vgpu=host_vgpu_facts(root, release.version),
        pending_kernels=tuple(f"{k.release} ({k.why})" for k in prebuild.Prebuilder(
            settings, root, runner, kit, pin).wanted(kernel)) if kernel else (),
        reboot_sentinel=settings.reboot_sentinel,
        drift=inplace.drift(root),
        compiler=compiler, foreign=foreign,
    )


def make_plan(settings: Settings, root: HostRoot, runner: HostRunner, kit: Kit) -> list[PlanItem]:
    """The steps `install` would take now, changing nothing (host commands are read-only)."""
    why, targets = gate(settings, kit)
    if why is not None:
        return [PlanItem("gate", False, f"not a target node, nothing to do: {why}")]
    facts = read_facts(settings, root, runner, kit, targets)
    fast = facts.fast_refusal is None
    items = [PlanItem("gate", False, "target GPU present")]
    for step in STEPS:
        if applies(step, fast):
            look = step.look(facts)
            items.append(PlanItem(step.name, look.acts, look.why))
    return items


def format_plan(items: list[PlanItem]) -> str:
    header = f"plan (dry run, nothing changed; module type variable {inst.MODULE_TYPE_VAR}):"
    return "\n".join([header, *(f"  {item.line()}" for item in items)])
