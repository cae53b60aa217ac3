"""ensure_installer against the real loopback fault server: every injected fault."""

import hashlib
import stat
import time

import pytest
import requests
from structlog.testing import capture_logs

from agent.catalog import Release
from agent.errors import DownloadError
from agent.host.root import HostRoot
from agent.install.cache import CACHE_DIR
from agent.install.download import DownloadOptions, ensure_installer, new_session
from agent.install.retry import RETRY
from tests.simnode.httpd import CA_FILE, Reply, random_bytes

SIZE = 3 * (1 << 20) + 12345  # a few chunks and an odd tail
PAYLOAD = random_bytes(SIZE)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "NVIDIA-Linux-x86_64-580.105.08-grid-azure.run"
PATH = f"/d/{NAME}"


@pytest.fixture
def root(tmp_path):
    return HostRoot(tmp_path)


@pytest.fixture
def slept():
    return []


@pytest.fixture
def trust_test_ca(monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE beat session.verify; it is how a mirror's CA is given.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(CA_FILE))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a CI proxy must not see loopback tests


@pytest.fixture
def fetch(root, slept, trust_test_ca):
    """ensure_installer with a recorded (never real) sleep between attempts."""

    def run(release, *, session=None, **opts):
        session = session or new_session()
        options = DownloadOptions(**{"read_timeout": 5.0, **opts})
        return ensure_installer(release, root, session=session, options=options,
                                progress=lambda done, total: None,
                                retrying=RETRY.copy(sleep=slept.append))

    return run


def served(server, *replies, path=PATH, data=PAYLOAD, **flags):
    server.add(path, data, **flags)
    server.plan(path, *replies)
    return Release("580.105.08-grid-azure", server.url(path), SHA, None, "proprietary",
                   allow_http=not server.tls)


def cache_files(root):
    return sorted(p.relative_to(root.root) for p in root.path(CACHE_DIR).rglob("*")
                  if p.is_file())


def test_https_download_lands_verified_under_its_sha256(https_server, fetch, root):
    path = fetch(served(https_server))
    assert path == root.path(f"{CACHE_DIR}/{SHA}/{NAME}")
    assert path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert cache_files(root) == [path.relative_to(root.root)]  # no temp file left
    assert https_server.count() == 1


def test_cache_hit_makes_zero_requests(https_server, fetch):
    release = served(https_server)
    first = fetch(release)
    https_server.reset_counters()
    with capture_logs() as logs:
        assert fetch(release) == first
    assert https_server.count() == 0
    assert [(e["event"], e["changed"]) for e in logs] == [("installer_cached", False)]


def test_corrupt_cache_entry_is_replaced(http_server, fetch):
    release = served(http_server)
    path = fetch(release)
    path.write_bytes(b"rotten")
    with capture_logs() as logs:
        assert fetch(release).read_bytes() == PAYLOAD
    assert "cache_entry_corrupt" in [e["event"] for e in logs]
    assert http_server.count() == 2


def test_dropped_connections_resume_with_range(http_server, fetch, slept):
    release = served(http_server, Reply.drop(700_000), Reply.drop(1_000_000), Reply.drop(1))
    with capture_logs() as logs:
        assert fetch(release).read_bytes() == PAYLOAD
    ranges = [r.range for r in http_server.requests]
    assert ranges == [None, "bytes=700000-", "bytes=1700000-", "bytes=1700001-"]
    assert http_server.bytes_sent <= SIZE * 1.05
    assert slept == []  # a connection that moved bytes is resumed at once
    done = next(e for e in logs if e["event"] == "installer_downloaded")
    assert done["received"] == SIZE


def test_503_honours_retry_after(http_server, fetch, slept):
    release = served(http_server, Reply.status(503, retry_after="7"))
    assert fetch(release).read_bytes() == PAYLOAD
    assert slept == [7.0]
    assert http_server.count() == 2


@pytest.mark.parametrize("code", [408, 429, 500, 502])
def test_transient_statuses_are_retried_with_backoff(http_server, fetch, slept, code):
    release = served(http_server, Reply.status(code))
    with capture_logs() as logs:
        assert fetch(release).read_bytes() == PAYLOAD
    assert len(slept) == 1 and 0 <= slept[0] <= 60
    assert [e["event"] for e in logs].count("download_retry") == 1


@pytest.mark.parametrize("code", [403, 404, 410])
def test_other_4xx_fail_at_once(http_server, fetch, root, code):
    release = served(http_server, Reply.status(code))
    with pytest.raises(DownloadError, match=f"answered {code}") as err:
        fetch(release)
    assert err.value.exit_code == 5
    assert http_server.count() == 1
    assert cache_files(root) == []


def test_unknown_path_is_404(http_server, fetch, root):
    release = served(http_server)
    release = Release(release.version, http_server.url("/nope.run"), SHA, None, "auto",
                      allow_http=True)
    with pytest.raises(DownloadError, match="404"):
        fetch(release)


def test_retries_run_out(http_server, fetch, slept, root):
    release = served(http_server, *[Reply.status(503)] * 5)
    with pytest.raises(DownloadError, match="gave up after 3 attempt"):
        fetch(release, attempts=3)
    assert http_server.count() == 3 and len(slept) == 2
    assert cache_files(root) == []


def test_corrupted_body_is_refused_and_removed(http_server, fetch, root):
    release = served(http_server, corrupt=True)
    with pytest.raises(DownloadError) as err:
        fetch(release)
    wire = bytearray(PAYLOAD)
    wire[SIZE // 2] ^= 0xFF
    got = hashlib.sha256(wire).hexdigest()
    assert f"expected {SHA}, got {got}" in err.value.message
    assert cache_files(root) == []
    assert http_server.count() == 1  # wrong bytes are not retried into the same wrong bytes


def test_range_ignored_restarts_cleanly(http_server, fetch):
    release = served(http_server, Reply.drop(1_500_000), ignore_range=True)
    with capture_logs() as logs:
        assert fetch(release).read_bytes() == PAYLOAD
    assert [r.range for r in http_server.requests] == [None, "bytes=1500000-"]
    assert http_server.bytes_sent == 1_500_000 + SIZE
    assert "download_range_ignored" in [e["event"] for e in logs]


def test_stalled_server_times_out_then_retries(http_server, fetch, slept):
    release = served(http_server, Reply.stall(30))
    started = time.monotonic()
    assert fetch(release, read_timeout=0.3).read_bytes() == PAYLOAD
    assert time.monotonic() - started < 5
    assert http_server.count() == 2 and len(slept) == 1


def test_slow_drip_within_the_read_timeout_completes(http_server, fetch):
    data = PAYLOAD[:64 * 1024]
    release = served(http_server, Reply.drip(8192, 0.01), data=data)
    release = Release(release.version, release.url, hashlib.sha256(data).hexdigest(), None,
                      "auto", allow_http=True)
    assert fetch(release, read_timeout=1.0).read_bytes() == data
    assert http_server.count() == 1


def test_redirect_to_https_is_followed(https_server, fetch):
    https_server.add(PATH, PAYLOAD)
    release = served(https_server, Reply.redirect(PATH, 301), path="/latest.run")
    assert fetch(release).name == "latest.run"
    assert [r.path for r in https_server.requests] == ["/latest.run", PATH]


def test_redirect_to_http_is_refused_before_it_is_made(https_server, http_server, fetch, root):
    http_server.add(PATH, PAYLOAD)
    release = served(https_server, Reply.redirect(http_server.url(PATH)))
    with pytest.raises(DownloadError, match="only HTTPS is allowed"):
        fetch(release)
    assert http_server.count() == 0
    assert cache_files(root) == []


def test_http_mirror_redirects_must_still_go_to_https(http_server, fetch):
    http_server.add("/other.run", PAYLOAD)
    release = served(http_server, Reply.redirect("/other.run"))
    with pytest.raises(DownloadError, match="only HTTPS is allowed for redirects"):
        fetch(release)
    assert http_server.count() == 1


def test_plain_http_without_the_mirror_opt_in_is_refused(http_server, fetch):
    release = served(http_server)
    release = Release(release.version, release.url, SHA, None, "auto", allow_http=False)
    with pytest.raises(DownloadError, match="only HTTPS"):
        fetch(release)
    assert http_server.count() == 0


def test_redirect_loop_is_bounded(https_server, fetch):
    release = served(https_server, *[Reply.redirect("/loop.run")] * 10, path="/loop.run")
    with pytest.raises(DownloadError, match="more than 5 redirects"):
        fetch(release)
    assert https_server.count() == 6


def test_untrusted_certificate_is_not_retried(https_server, root, slept, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    release = served(https_server)
    with pytest.raises(DownloadError, match="TLS failure"):
        ensure_installer(release, root, session=new_session(), progress=lambda *_: None,
                         retrying=RETRY.copy(sleep=slept.append))
    assert slept == []


def test_catalog_size_mismatch_is_refused(http_server, fetch, root):
    release = served(http_server)
    release = Release(release.version, release.url, SHA, SIZE + 1, "auto", allow_http=True)
    with pytest.raises(DownloadError, match=f"announces {SIZE} bytes, the catalog says"):
        fetch(release)
    assert cache_files(root) == []


def test_not_enough_space_is_refused_before_any_request(http_server, fetch):
    release = served(http_server)
    release = Release(release.version, release.url, SHA, 1 << 60, "auto", allow_http=True)
    with pytest.raises(DownloadError, match="not enough space"):
        fetch(release)
    assert http_server.count() == 0


def test_unverified_release_lands_under_the_hash_it_has(http_server, fetch, root):
    release = served(http_server)
    release = Release("595.58.03", release.url, None, None, "auto", allow_http=True)
    assert fetch(release) == root.path(f"{CACHE_DIR}/{SHA}/{NAME}")


def test_progress_events_carry_bytes_total_and_rate(http_server, root, slept):
    seen = []
    with capture_logs() as logs:
        ensure_installer(served(http_server), root, session=new_session(),
                         options=DownloadOptions(progress_every=0.0),
                         progress=lambda done, total: seen.append((done, total)),
                         retrying=RETRY.copy(sleep=slept.append))
    events = [e for e in logs if e["event"] == "download_progress"]
    assert events and events[-1]["bytes"] == SIZE and events[-1]["total"] == SIZE
    assert all(e["rate_bytes_per_second"] > 0 for e in events)
    assert seen[-1] == (SIZE, SIZE)


def test_https_proxy_variables_are_honoured(http_server, fetch, monkeypatch):
    # The fault server answers absolute-form requests, i.e. it can play the proxy.
    served(http_server)
    monkeypatch.setenv("HTTP_PROXY", http_server.base)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    release = Release("v1", f"http://mirror.invalid{PATH}", SHA, None, "auto", allow_http=True)
    assert fetch(release).read_bytes() == PAYLOAD
    (seen,) = http_server.requests
    assert seen.absolute and seen.host == "mirror.invalid"


def test_no_proxy_bypasses_the_proxy(http_server, fetch, monkeypatch):
    release = served(http_server)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch(release).read_bytes() == PAYLOAD
    assert not http_server.requests[0].absolute


def test_a_given_session_is_used_as_is(http_server, root, slept):
    session = requests.Session()
    session.trust_env = False
    release = served(http_server)
    ensure_installer(release, root, session=session, progress=lambda *_: None,
                     retrying=RETRY.copy(sleep=slept.append))
    assert http_server.count() == 1


def test_a_huge_retry_after_is_capped(http_server, fetch, slept):
    release = served(http_server, Reply.status(429, retry_after="86400"))
    fetch(release)
    assert slept == [300.0]


# -- bounds (issue 12 item 7): deadline, minimum progress, size cap when unknown --------


def test_a_slow_drip_is_retried_then_exit_5(http_server, fetch, root):
    # 64 bytes every 50 ms is about 1.3 KB/s: below 100 KB/s over each 0.3 s window.
    release = served(http_server, *[Reply.drip(64, 0.05)] * 3)
    began = time.monotonic()
    with pytest.raises(DownloadError, match=r"gave up after 3 attempt.*minimum of 100000") as err:
        fetch(release, attempts=3, min_rate=100_000, rate_window=0.3)
    assert err.value.exit_code == 5
    assert time.monotonic() - began < 10
    assert http_server.count(PATH) == 3  # a slow attempt is not a free resume
    assert cache_files(root) == []


def test_a_drip_that_is_fast_enough_completes(http_server, fetch):
    release = served(http_server, Reply.drip(256 << 10, 0.01))
    assert fetch(release, min_rate=100_000, rate_window=0.2).read_bytes() == PAYLOAD


def test_the_overall_deadline_ends_a_download_that_keeps_moving(http_server, fetch, root):
    release = served(http_server, Reply.drip(1, 0.02))  # moves, but would take days
    began = time.monotonic()
    with pytest.raises(DownloadError, match="passed its 1 s deadline") as err:
        fetch(release, min_rate=0, deadline=1.0)
    assert err.value.exit_code == 5
    assert 1.0 <= time.monotonic() - began < 5
    assert cache_files(root) == []


def test_the_deadline_bounds_the_read_timeout_of_a_silent_server(http_server, fetch):
    release = served(http_server, Reply.stall(30))
    began = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        fetch(release, deadline=1.0, read_timeout=20.0)
    assert time.monotonic() - began < 5


def test_an_endless_body_of_unknown_size_is_cut_at_the_cap(http_server, fetch, root):
    http_server.add(PATH, PAYLOAD[: 64 << 10], endless=True)
    release = Release("580.105.08-grid-azure", http_server.url(PATH), SHA, None,
                      "proprietary", allow_http=True)
    with pytest.raises(DownloadError, match="passed 2 MiB with no size") as err:
        fetch(release, max_bytes=2 << 20)
    assert err.value.exit_code == 5
    assert http_server.count(PATH) == 1
    assert cache_files(root) == []


def test_settings_carry_the_bounds():
    from agent.install.download import download_options
    from agent.settings import build_settings

    opts = download_options(build_settings({}, {
        "GRID_AGENT_DOWNLOAD_DEADLINE": "600", "GRID_AGENT_DOWNLOAD_MIN_RATE": "1024",
        "GRID_AGENT_DOWNLOAD_MAX_MB": "512"}))
    assert (opts.deadline, opts.min_rate, opts.max_bytes) == (600.0, 1024, 512 << 20)


def test_sigterm_mid_download_stops_it_and_leaves_no_partial_file(http_server, fetch, root):
    import os
    import signal
    import threading

    from agent.errors import Terminated
    from agent.signals import terminate_on_signals

    release = served(http_server, Reply.drip(1024, 0.05))  # about a minute of body
    sent = []

    def signal_once_the_body_flows():
        # On the event (body bytes sent), not after a guessed delay: a SIGTERM before the
        # handler is set would kill the test run itself.
        deadline = time.monotonic() + 60
        while http_server.bytes_sent == 0:
            if time.monotonic() > deadline:
                return  # never sent: pytest.raises below fails
            time.sleep(0.01)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_once_the_body_flows, daemon=True).start()
    with pytest.raises(Terminated), terminate_on_signals():
        fetch(release, min_rate=0)
    assert time.monotonic() - sent[0] < 5  # at once, not after the body's minute
    assert cache_files(root) == []
