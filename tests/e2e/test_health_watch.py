"""`grid-agent watch` against the simulated node: ready, not ready, self-heal, SIGTERM."""

import time
import urllib.error
import urllib.request
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.handoff import MARKER_CONTENT
from tests.e2e import installrun
from tests.e2e.healthrun import check, start_watch
from tests.e2e.installrun import MARKER, driver_root_mounted, host_text, run_agent

catalog = installrun.catalog  # the fixture: the pinned driver served on loopback

pytestmark = [pytest.mark.e2e, pytest.mark.simnode]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def install(simnode, env):
    run = run_agent(simnode.agent_args(), env, "install")
    assert run.returncode == 0, run.stderr[-3000:]


def metric(text, name, **labels):
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(name)


# Reversible post-install scenarios and the check that must name each (wrong-profile:
# against the profile the healthy node reported, given as GRID_AGENT_EXPECTED_PROFILE).
# no-gridd-unit removes the unit for good on the rig: test_health_check covers it.
UNHEALTHY = (("unlicensed", "license"), ("smi-exit-14", "nvidia_smi"),
             ("wrong-profile", "profile"))


def next_verdict(watch, timeout=30, **match):
    """The first verdict logged from now on that matches (a cycle may already be under way)."""
    start, deadline = len(watch.named("health_verdict")), time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in watch.named("health_verdict")[start:]:
            if all(event.get(k) == v for k, v in match.items()):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no verdict {match}; last: {watch.named('health_verdict')[-2:]}")


def test_watch_ready_unready_reboot_heal_and_sigterm(simnode, catalog, tmp_path):
    install(simnode, catalog)
    profile = check(simnode, catalog)[1]["facts"]["gpus"][0]["profile"]
    watch = start_watch(simnode, catalog, tmp_path, GRID_AGENT_EXPECTED_PROFILE=profile)
    try:
        watch.wait_event("health_verdict", ready=True)
        assert get(watch.url("/readyz"))[0] == 200
        status, text = get(watch.url("/metrics"))
        assert status == 200 and metric(text, "grid_agent_driver_ready") == 1.0
        assert metric(text, "grid_agent_install_info", outcome="installed") == 1.0

        for scenario, name in UNHEALTHY:
            simnode.set_scenarios(scenario)
            bad = next_verdict(watch, ready=False)
            assert bad["reason"].startswith(f"{name}: "), (scenario, bad)
            status, body = get(watch.url("/readyz"))
            assert status == 503 and body.startswith(f"{name}: "), (scenario, body)
            simnode.set_scenarios("healthy")
            next_verdict(watch, ready=True)

        simnode.reboot()  # /run emptied: marker and mount gone, the driver autoloaded
        watch.wait_event("self_heal", action="published")
        assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)
        assert get(watch.url("/readyz"))[0] == 200

        assert watch.stop() == 0
        # Within a second of the signal, by the agent's own log (the process teardown of
        # umockdev-run and python on a loaded machine is not what is measured).
        signalled = watch.named("watch_signal")[0]["timestamp"]
        stopped = watch.named("watch_stopped")[0]["timestamp"]
        assert (datetime.fromisoformat(stopped) - datetime.fromisoformat(signalled)
                ).total_seconds() < 1.0
    finally:
        watch.stop()
    assert host_text(simnode, MARKER) == MARKER_CONTENT and driver_root_mounted(simnode)
    assert simnode.path("/sys/module/nvidia/refcnt").exists()  # SIGTERM never unloads


def test_watch_withdraws_a_marker_when_the_driver_is_gone(simnode, catalog, tmp_path):
    install(simnode, catalog)
    simnode.reboot(autoload=False)
    marker = simnode.path(MARKER)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(MARKER_CONTENT)  # a stale marker, e.g. from an old-style script
    watch = start_watch(simnode, catalog, tmp_path)
    try:
        watch.wait_event("self_heal", action="marker_removed")
        assert host_text(simnode, MARKER) is None
        status, body = get(watch.url("/readyz"))
        assert status == 503 and "driver_loaded" in body
    finally:
        assert watch.stop() == 0
