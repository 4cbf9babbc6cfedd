"""Progress bars: live on a terminal, sparse whole lines in logs."""

import io

import tnsim.progress as P


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(stream, total, steps, **kw):
    with P.bar(total=total, desc="work", file=stream, **kw) as b:
        for _ in range(steps):
            b.update(1)
    return stream.getvalue()


def test_terminals_get_the_live_bar_and_logs_a_line_per_tenth():
    assert not isinstance(P.bar(total=3, file=Terminal(), disable=True), P.LogBar)
    assert isinstance(P.bar(total=3, file=io.StringIO(), disable=True), P.LogBar)
    live = run(Terminal(), 1000, 1000)
    assert "\r" in live  # carriage-return updates, as tqdm draws them
    log = run(io.StringIO(), 1000, 1000)
    lines = log.splitlines()
    assert "\r" not in log and log.endswith("\n")
    # the start, each tenth (100, 200, ..., 900) and the end: 11 lines for 1000 updates
    assert len(lines) == 11
    assert [line.split("|")[2].split()[0] for line in lines] == [f"{k}/1000" for k in range(0, 1001, 100)]


def test_logs_without_a_total_write_at_most_one_line_per_interval(monkeypatch):
    monkeypatch.setattr(P, "LOG_INTERVAL", 3600.0)
    lines = run(io.StringIO(), None, 500).splitlines()
    assert len(lines) == 2  # the start and the final state
    monkeypatch.setattr(P, "LOG_INTERVAL", 0.0)
    assert len(run(io.StringIO(), None, 5).splitlines()) == 7  # start, each update, the end
    # a bar that is never shown (delay) writes nothing, as tqdm's does
    assert run(io.StringIO(), 10, 10, delay=3600) == ""
    assert run(io.StringIO(), 10, 10, disable=True) == ""
