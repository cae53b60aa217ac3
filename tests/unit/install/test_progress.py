"""Progress: the periodic log event and the terminal bar."""

import io

from structlog.testing import capture_logs

from agent.install.progress import Meter, TtyBar, tty_progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_meter_logs_every_few_seconds_with_bytes_total_and_rate():
    clock = Clock()
    meter = Meter("https://x/d.run", every=5.0, clock=clock)
    with capture_logs() as logs:
        clock.now += 1
        meter.update(10, 100, 10)
        clock.now += 4
        meter.update(50, 100, 40)
        clock.now += 1
        meter.update(60, 100, 10)
    assert logs == [{"event": "download_progress", "log_level": "info", "bytes": 50,
                     "total": 100, "rate_bytes_per_second": 10.0}]
    assert meter.received == 60


def test_tty_bar_draws_in_place_and_ends_the_line():
    stream, clock = Tty(), Clock()
    bar = TtyBar(stream, width=10, clock=clock)
    clock.now += 1
    bar(512 << 20, 1024 << 20)
    clock.now += 0.05
    bar(600 << 20, 1024 << 20)  # throttled
    clock.now += 0.95
    bar(1024 << 20, 1024 << 20)
    assert stream.getvalue() == ("\r[#####.....]  50%  512.0/1024.0 MiB  512.0 MiB/s"
                                 "\r[##########] 100%  1024.0/1024.0 MiB  512.0 MiB/s\n")


def test_bar_only_on_a_terminal():
    assert tty_progress(io.StringIO()) is None
    assert isinstance(tty_progress(Tty()), TtyBar)


def test_a_log_event_ends_the_bar_line_first():
    stream, clock = Tty(), Clock()
    bar = TtyBar(stream, width=4, clock=clock)
    meter = Meter("https://x/d.run", every=5.0, progress=bar, clock=clock)
    with capture_logs():
        clock.now += 1
        meter.update(1, 4, 1)
        clock.now += 5
        meter.update(2, 4, 1)
        clock.now += 1
        meter.update(4, 4, 2)
    assert stream.getvalue().count("\n") == 2  # one before the log line, one at the end
    bar.break_line()
    assert stream.getvalue().count("\n") == 2
