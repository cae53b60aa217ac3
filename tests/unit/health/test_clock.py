"""One clock per app: the cycle, the cache, /status, /metrics, the verdict file and the licence
check all read the clock the app was given, never a real one (issue 11 item 5).

The fake clock starts far from any real reading (1e6 s monotonic; June 2026 wall time), so a
component that read time.monotonic, time.time or datetime.now would show a wrong number here.
"""

import json
from datetime import UTC, datetime

from agent.health.monitor import Monitor, VerdictCache
from agent.health.server import HealthApp
from tests.fakes.clock import FakeClock
from tests.fakes.watch import FakeHost, healer, health, healthy_node
from tests.unit.health.test_server import call, families, sample

STALE_AFTER_S = 0.01 + 0.0 + 5.0 + 30.0  # interval + jitter + check timeout + 30


class SlowSmi(FakeHost):
    """Each nvidia-smi takes 1.5 s on the app's clock."""

    def run(self, argv, **kw):
        if argv[0] == "nvidia-smi":
            self.clock.advance(1.5)
        return super().run(argv, **kw)


def test_the_watch_app_reads_only_its_own_clock(tmp_path):
    healthy_node(tmp_path)
    clock = FakeClock.at(datetime(2026, 7, 6, tzinfo=UTC))  # licence expires 2026-07-07 16:01
    host = SlowSmi(tmp_path)
    host.clock = clock
    h = health(tmp_path, host, clock=clock)
    vfile = tmp_path / "pod/verdict.json"
    monitor = Monitor(h, VerdictCache(clock), interval=0.01, jitter=0.0, check_timeout=5.0,
                      healer=healer(), verdict_file=vfile)
    app = HealthApp(monitor.cache, stale_after=monitor.stale_after)
    started = clock.time()

    verdict = monitor.step()

    assert verdict.checked_at == started
    assert verdict.duration == 3.0  # two nvidia-smi calls, nothing else
    assert verdict.check("license").details["gpus"] == {
        "00000000:00:02.0": "licensed, lease ends in 40.0 h"}  # judged at the app's clock
    assert json.loads(vfile.read_text())["written_at"] == clock.time()
    clock.advance(7.0)
    status = json.loads(call(app, "/status")[2])
    assert (status["alive"], status["heartbeat_age_seconds"]) == (True, 7.0)
    assert sample(families(call(app, "/metrics")[2]), "grid_agent_loop_alive") == 1.0
    clock.advance(STALE_AFTER_S - 7.0 + 0.5)
    status = json.loads(call(app, "/status")[2])
    assert (status["alive"], status["heartbeat_age_seconds"]) == (False, STALE_AFTER_S + 0.5)
    assert sample(families(call(app, "/metrics")[2]), "grid_agent_loop_alive") == 0.0
    assert call(app, "/livez")[0] == 503


def test_a_cache_on_another_clock_is_refused(tmp_path):
    healthy_node(tmp_path)
    h = health(tmp_path, FakeHost(tmp_path))
    try:
        Monitor(h, VerdictCache(FakeClock()), interval=1, jitter=0, check_timeout=1)
    except ValueError as exc:
        assert "one clock" in str(exc)
    else:
        raise AssertionError("a second clock was accepted")
