"""`grid-agent check` against the simulated node: healthy after install, each unhealthy scenario."""

import os

import pytest

from tests.e2e import installrun
from tests.e2e.healthrun import check, reason, statuses
from tests.e2e.installrun import run_agent

catalog = installrun.catalog  # the fixture: the pinned driver served on loopback

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def install(simnode, env):
    run = run_agent(simnode.agent_args(), env, "install")
    assert run.returncode == 0, run.stderr[-3000:]


def test_check_after_install_and_each_unhealthy_scenario(simnode, catalog):
    install(simnode, catalog)
    code, verdict, run = check(simnode, catalog)
    assert code == 0, run.stderr[-3000:]
    assert verdict["ready"] is True and "fail" not in statuses(verdict).values(), verdict
    assert statuses(verdict)["driver_loaded"] == "ok" and statuses(verdict)["handoff"] == "ok"
    profile = verdict["facts"]["gpus"][0]["profile"]
    assert profile

    simnode.set_scenarios("unlicensed")
    code, verdict, _ = check(simnode, catalog)
    assert code == 9 and statuses(verdict)["license"] == "fail"
    assert reason(verdict, "license").startswith("not licensed (Unlicensed")

    simnode.set_scenarios("wrong-profile")
    code, verdict, _ = check(simnode, {**catalog, "GRID_AGENT_EXPECTED_PROFILE": profile})
    assert code == 9 and statuses(verdict)["profile"] == "fail", verdict

    simnode.set_scenarios("mig-disabled")
    code, verdict, _ = check(simnode, catalog)
    assert code == 0 and statuses(verdict)["mig"] == "warn"
    code, verdict, _ = check(simnode, {**catalog, "GRID_AGENT_MIG_POLICY": "fail"})
    assert code == 9 and statuses(verdict)["mig"] == "fail"

    simnode.set_scenarios("smi-exit-14")
    code, verdict, _ = check(simnode, catalog)
    assert code == 9 and statuses(verdict)["nvidia_smi"] == "fail"
    assert reason(verdict, "nvidia_smi").startswith("nvidia-smi exited 14")

    simnode.set_scenarios("healthy")
    assert check(simnode, catalog)[0] == 0


def test_check_without_gridd_unit(simnode, catalog):
    install(simnode, catalog)
    simnode.set_scenarios("no-gridd-unit")
    code, verdict, _ = check(simnode, catalog)
    assert code == 9 and statuses(verdict)["gridd"] == "fail", verdict


BARE = {"GRID_AGENT_LOG_FORMAT": "json", "GRID_AGENT_TERMINATION_LOG": os.devnull}


def test_check_before_install_is_a_reason_not_a_traceback(simnode):
    code, verdict, run = check(simnode, BARE)
    assert code == 9
    assert reason(verdict, "driver_loaded") == "the nvidia kernel module is not loaded"
    assert statuses(verdict)["nvidia_smi"] == "fail"
    assert "Traceback" not in run.stderr


def test_check_on_a_node_without_target_runs_nothing(simnode):
    run = run_agent(simnode.agent_args(), {**BARE, "GRID_AGENT_LOG_LEVEL": "debug"},
                    "check", "--json", device="h100")
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"state": "not_applicable"' in run.stdout
    assert run.named("host_command") == []
