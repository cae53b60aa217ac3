"""The watch loop: self-heal of the hand-off, deadlines, crashes, stop, the verdict file."""

import json
import threading
import time
from dataclasses import replace

from structlog.testing import capture_logs

from agent import handoff as pub
from agent.health.monitor import Monitor, VerdictCache
from agent.health.verdict import HEALTHY, UNHEALTHY
from agent.host.lock import host_lock
from agent.host.root import HostRoot
from tests.fakes.pci import H100
from tests.fakes.smi import fixture
from tests.fakes.watch import (
    RBIND,
    FakeHost,
    healer,
    health,
    healthy_node,
    put,
    reboot_without_driver,
)


def monitor(root, host, *, heal=True, timeout=5.0, devices=None, **kw):
    h = health(root, host) if devices is None else health(root, host, devices=devices)
    return Monitor(h, VerdictCache(h.clock), interval=0.01, jitter=0.0, check_timeout=timeout,
                   healer=healer() if heal else None, **kw)


def test_reboot_with_driver_autoloaded_restores_the_handoff(tmp_path):
    healthy_node(tmp_path, published=False)  # /run emptied by the reboot, driver loaded again
    host = FakeHost(tmp_path)
    with capture_logs() as logs:
        verdict = monitor(tmp_path, host).step()
    assert ["mount", "--rbind", "/", "/run/nvidia/driver"] in host.calls
    assert pub.inspect_handoff(HostRoot(tmp_path)).intact
    assert verdict.state == HEALTHY, verdict.reason()
    assert verdict.facts["self_heal"] == "published"
    assert {"event": "self_heal", "action": "published", "changed": True,
            "log_level": "info"} in logs


def test_healthy_handoff_is_left_alone(tmp_path):
    healthy_node(tmp_path)
    host = FakeHost(tmp_path)
    m = monitor(tmp_path, host)
    m.step()
    assert not [a for a in host.calls if a[0] == "mount"]
    assert m.cache.heals == {}


def test_driver_gone_withdraws_the_marker_and_never_unmounts(tmp_path):
    healthy_node(tmp_path)
    reboot_without_driver(tmp_path)
    host = FakeHost(tmp_path, smi_code=9, smi_out=fixture("prose-no-driver.txt"),
                    xml=fixture("prose-no-driver.txt"))
    m = monitor(tmp_path, host)
    verdict = m.step()
    assert not (tmp_path / pub.MARKER.lstrip("/")).exists()
    assert RBIND in (tmp_path / "proc/1/mountinfo").read_text()
    assert not [a for a in host.calls if a[0] in ("umount", "rmmod", "modprobe")]
    assert verdict.state == UNHEALTHY and m.cache.heals == {"marker_removed": 1}


def test_unhealthy_driver_that_is_loaded_keeps_the_marker(tmp_path):
    healthy_node(tmp_path)
    host = FakeHost(tmp_path, smi_code=14, smi_out="WARNING: infoROM is corrupted\n")
    monitor(tmp_path, host).step()
    assert (tmp_path / pub.MARKER.lstrip("/")).exists()  # not "definitely gone"


def test_broken_driver_is_not_published(tmp_path):
    healthy_node(tmp_path, published=False)
    host = FakeHost(tmp_path, smi_code=14, smi_out="boom\n")
    verdict = monitor(tmp_path, host).step()
    assert not [a for a in host.calls if a[0] == "mount"]
    assert verdict.check("handoff").status == "fail"


def test_self_heal_waits_for_a_held_lock(tmp_path):
    healthy_node(tmp_path, published=False)
    host = FakeHost(tmp_path)
    with host_lock(HostRoot(tmp_path), wait=False), capture_logs() as logs:
        monitor(tmp_path, host).step()
    assert not [a for a in host.calls if a[0] == "mount"]
    assert any(e["event"] == "self_heal_deferred" for e in logs)


def test_self_heal_off(tmp_path):
    healthy_node(tmp_path, published=False)
    host = FakeHost(tmp_path)
    monitor(tmp_path, host, heal=False).step()
    assert not [a for a in host.calls if a[0] == "mount"]


def test_not_applicable_node_is_never_touched(tmp_path):
    put(tmp_path, "/proc/1/mountinfo", "")
    host = FakeHost(tmp_path)
    verdict = monitor(tmp_path, host, devices=(H100,)).step()
    assert verdict.ready and host.calls == []


def test_hanging_check_is_cut_and_the_loop_goes_on(tmp_path):
    healthy_node(tmp_path)
    hang = threading.Event()
    host = FakeHost(tmp_path, hang=hang)
    m = monitor(tmp_path, host, timeout=0.3)
    began = time.monotonic()
    first = m.step()
    assert time.monotonic() - began < 1.0
    assert first.state == UNHEALTHY
    assert first.reason() == "cycle: check cycle did not finish within 0.3s"
    second = m.step()  # the hung worker is not doubled
    assert second.reason() == "cycle: the previous check cycle is still running"
    assert m.cache.timeouts == 2
    host.hang = None
    hang.set()  # the host command returns at last
    m._worker.join(2)
    assert m.step().state == HEALTHY


def test_a_crashing_check_is_a_verdict_not_a_dead_loop(tmp_path):
    healthy_node(tmp_path)

    def boom():
        raise RuntimeError("pyudev exploded")

    m = monitor(tmp_path, FakeHost(tmp_path))
    m.health = replace(m.health, scan_pci=boom)
    verdict = m.step()
    assert verdict.reason() == "cycle: check cycle crashed: RuntimeError('pyudev exploded')"


def test_stop_mid_cycle_returns_within_a_second(tmp_path):
    healthy_node(tmp_path)
    hang = threading.Event()
    host = FakeHost(tmp_path, hang=hang)
    m = monitor(tmp_path, host, timeout=30)
    stopped = []

    def stop_mid_cycle():  # once the cycle hangs in nvidia-smi: on the event, not a delay
        try:
            deadline = time.monotonic() + 30
            while not any(argv[0] == "nvidia-smi" for argv in list(host.calls)):
                if time.monotonic() > deadline:
                    return  # never reached: stopped stays empty, the test fails
                time.sleep(0.01)
            stopped.append(time.monotonic())
        finally:
            m.stop.set()  # whatever happened here, the loop ends

    threading.Thread(target=stop_mid_cycle, daemon=True).start()
    m.run()
    assert stopped and time.monotonic() - stopped[0] < 1.0
    hang.set()


def test_run_loops_until_stopped_and_writes_the_verdict_file(tmp_path):
    healthy_node(tmp_path)
    vfile = tmp_path / "pod/verdict.json"
    m = monitor(tmp_path, FakeHost(tmp_path), verdict_file=vfile)
    m.run(max_cycles=3)
    assert m.cache.cycles == 3
    data = json.loads(vfile.read_text())
    assert data["state"] == HEALTHY and data["ready"] is True
    assert data["stale_after"] == m.stale_after
    assert data["checks"][0]["name"] == "driver_loaded"
    assert list(vfile.parent.iterdir()) == [vfile]  # no temp files left


def test_jitter_is_added_to_the_interval(tmp_path):
    healthy_node(tmp_path)
    m = monitor(tmp_path, FakeHost(tmp_path))
    m.interval, m.jitter = 0.0, 0.2
    waits = []
    m.stop.wait = lambda t: waits.append(t) or len(waits) >= 3
    m.stop.is_set = lambda: len(waits) >= 3
    m.run()
    assert len(waits) == 3 and all(0.0 <= w <= 0.2 for w in waits) and len(set(waits)) > 1


def test_checks_run_at_a_lower_priority_than_the_probes(tmp_path):
    import os
    healthy_node(tmp_path)
    seen = []

    def scan():
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return []

    m = monitor(tmp_path, FakeHost(tmp_path))
    m.health = replace(m.health, scan_pci=scan)
    m.step()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(mine + 10, 19)]
