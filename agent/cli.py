"""The click CLI: the only place errors become exit codes and termination messages."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import click
import structlog

from agent import __version__
from agent import log as agent_log
from agent.errors import (
    BUG,
    INTERRUPTED,
    AgentError,
    DownloadError,
    InstallError,
    NotATargetNode,
    UnhealthyError,
)
from agent.pci import Detection, detect
from agent.redact import redact_text
from agent.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    OPTIONS,
    Settings,
    build_settings,
    retired_in,
    termination_log_path,
)
from agent.signals import terminate_on_signals
from agent.vgpu import HostVgpuFacts, host_vgpu_facts

if TYPE_CHECKING:
    from agent.install.outlook import BuildView

log = structlog.get_logger(__name__)

_REPORT = "grid_agent.report"


def _help(field: str) -> str:
    opt = next(o for o in OPTIONS if o.field == field)
    return f"{opt.help} [env {opt.env}; default {opt.default}]"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="grid-agent", message="%(prog)s %(version)s")
@click.option("--host-root", metavar="PATH", help=_help("host_root"))
@click.option("--host-pid", metavar="PID", help=_help("host_pid"))
@click.option("--nsenter/--no-nsenter", default=None, help=_help("nsenter"))
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help=_help("log_format"))
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help=_help("log_level"))
@click.pass_context
def cli(ctx: click.Context, /, **flags: object) -> None:
    """Install, verify and watch the Azure GRID driver on RTX PRO 6000 BSE nodes."""
    raw = {k: (None if v is None else str(v).lower() if isinstance(v, bool) else str(v))
           for k, v in flags.items()}
    settings = build_settings(raw, os.environ)
    agent_log.configure(settings.log_format, settings.log_level)
    for env, replacement in retired_in(os.environ):
        log.warning("setting_retired", variable=env, ignored=True, use=replacement)
    if callable(ctx.obj):  # run_cli's termination writer: failures under the lock, staging
        ctx.meta[_REPORT] = ctx.obj
    ctx.obj = settings


def _print_detection(found: Detection, host: HostVgpuFacts, build: BuildView | None,
                     as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "target_node": found.is_target_node,
            "targets": [d.as_dict() for d in found.targets],
            "nvidia": [d.as_dict() for d in found.nvidia],
            **host.as_dict(),
            **(build.as_dict() if build else {}),
        }, indent=2))
        return
    if not found.nvidia:
        click.echo("no NVIDIA PCI functions found")
    for dev in found.nvidia:
        mark = "target" if dev in found.targets else "other "
        sub = dev.subsystem_id or "-"
        click.echo(f"{mark}  {dev.slot}  {dev.pci_id}  sub {sub}  class 0x{dev.pci_class:06x}"
                   f"  driver {dev.driver or '-'}")
    if found.nvidia:
        click.echo(host.line())
    for line in build.lines() if build else ():
        click.echo(line)


@cli.command("detect")
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
@click.pass_obj
def detect_cmd(settings: Settings, as_json: bool) -> None:
    """Find the target GPU functions on this node (exit 0 found, 3 not a target)."""
    from agent.host.root import HostRoot
    from agent.host.udev import scan_pci
    from agent.install.outlook import build_view

    found = detect(scan_pci(), settings.target_spec)
    root = HostRoot(settings.host_root)
    host = host_vgpu_facts(root, settings.driver_version)
    # What install would decide about the build and another driver (a target node only).
    build = build_view(settings, root) if found.is_target_node else None
    log.info("pci_detected", nvidia=len(found.nvidia), targets=[d.slot for d in found.targets],
             host_vgpu=host.host.version if host.host else None)
    _print_detection(found, host, build, as_json)
    if not found.is_target_node:
        wanted = ",".join(str(i) for i in settings.target_ids)
        raise NotATargetNode(
            f"no target PCI function ({wanted}) on this node; "
            f"{len(found.nvidia)} NVIDIA function(s) found, none a target"
        )


_wait_lock = click.option("--wait-lock/--no-wait-lock", default=None,
                          help=_help("wait_lock"))
_dry_run = click.option("--dry-run", is_flag=True,
                        help="print which steps would act and why; change nothing")


@cli.command("install")
@_wait_lock
@_dry_run
@click.pass_obj
def install_cmd(settings: Settings, wait_lock: bool | None, dry_run: bool) -> None:
    """Converge the node to the pinned GRID driver and hand it to the GPU Operator."""
    from agent.install.commands import install_command

    install_command(settings, wait_lock=wait_lock, dry_run=dry_run, echo=click.echo,
                    report=click.get_current_context().meta.get(_REPORT))


@cli.command("run")
@_wait_lock
@_dry_run
@click.pass_obj
def run_cmd(settings: Settings, wait_lock: bool | None, dry_run: bool) -> None:
    """Install in the foreground with progress and a health report, for a person."""
    from agent.run import run_command

    run_command(settings, wait_lock=wait_lock, dry_run=dry_run, echo=click.echo)


@cli.command("uninstall")
@_wait_lock
@click.option("--purge", is_flag=True, help="also empty the download cache")
@click.pass_obj
def uninstall_cmd(settings: Settings, wait_lock: bool | None, purge: bool) -> None:
    """Remove the GPU Operator hand-off, the driver and the agent's state."""
    from agent.install.commands import uninstall_command

    uninstall_command(settings, wait_lock=wait_lock, purge=purge, echo=click.echo)


@cli.command("fetch")
@click.pass_obj
def fetch_cmd(settings: Settings) -> None:
    """Download and verify the driver installer into the host cache (exit 0, or 5)."""
    from agent.install.fetch import fetch_command

    fetch_command(settings, echo=click.echo)


@cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="print the verdict as JSON")
@click.pass_obj
def check_cmd(settings: Settings, as_json: bool) -> None:
    """Run the health checks once (exit 0 healthy, warnings allowed; 9 unhealthy)."""
    from agent.health.commands import check_command

    check_command(settings, as_json=as_json, echo=click.echo)


@cli.command("watch")
@click.pass_obj
def watch_cmd(settings: Settings) -> None:
    """Health sidecar: re-check the driver, self-heal the hand-off, serve probes and metrics."""
    from agent.health.commands import watch_command
    from agent.install.prebuild import watch_loop

    # Kernels installed but not running get the pinned driver built ahead of the reboot.
    watch_command(settings, background=(lambda stop: watch_loop(settings, stop),))


@cli.command("probe")
@click.argument("kind", type=click.Choice(["live", "ready"]))
@click.pass_obj
def probe_cmd(settings: Settings, kind: str) -> None:
    """Exec-probe answer from the verdict file `watch` writes (exit 0, or 9)."""
    from agent.health.commands import probe_command

    probe_command(settings, kind, echo=click.echo)


def _write_termination(message: str, environ: Mapping[str, str]) -> None:
    path = termination_log_path(environ)
    if path is None:
        return
    secret = environ.get("GRID_AGENT_DRIVER_URL", "")
    try:
        path.write_text(redact_text(message, secret) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("termination_log_unwritable", path=str(path), error=exc.strerror)
        return
    log.debug("termination_message_written", path=str(path))


def run_cli(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the CLI and map every outcome to an exit code (the one place that does)."""
    environ = os.environ if environ is None else environ
    agent_log.configure()
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        with terminate_on_signals():
            try:
                rv = cli.main(args=args, prog_name="grid-agent", standalone_mode=False,
                              obj=lambda line: _write_termination(line, environ))
            except OSError as exc:  # a host file the step did not classify: not a bug
                raise host_file_error(_command_of(args), exc) from exc
    except AgentError as exc:
        log.error("command_failed", error=exc.line(), exit_code=exc.exit_code,
                  kind=type(exc).__name__)
        _write_termination(exc.line(), environ)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        _write_termination(exc.format_message(), environ)
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return INTERRUPTED
    except Exception as exc:  # a bug: keep the traceback
        log.exception("internal_error", error=repr(exc))
        _write_termination(f"internal error (a bug): {exc!r}; see the pod log", environ)
        return BUG
    return rv if isinstance(rv, int) else 0


# The class (exit code) of a filesystem error no step classified, per command.
_FILE_ERRORS: dict[str, type[AgentError]] = {
    "install": InstallError, "run": InstallError, "uninstall": InstallError,
    "fetch": DownloadError, "check": UnhealthyError, "probe": UnhealthyError,
    "watch": UnhealthyError,
}


def _command_of(args: Sequence[str]) -> str:
    return next((a for a in args if a in cli.commands), "")


def host_file_error(command: str, exc: OSError) -> AgentError:
    """An OSError as the command's own failure, naming the path (exit 1 is for bugs)."""
    where = exc.filename if exc.filename is not None else "a host path"
    what = exc.strerror or str(exc)
    kind = _FILE_ERRORS.get(command, InstallError)
    return kind(f"filesystem error at {where}: {what}",
                remedy="fix or remove that path on the node (a file where a directory "
                       "belongs, a full disk, permissions), then retry")


def main() -> None:
    sys.exit(run_cli())
