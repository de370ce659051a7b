"""The one progress reporter of runs and sweeps: a line every few seconds on a pipe, with the time left;
nothing when quiet; a bar on a terminal; a note when something is slow."""

import io
import sys
import time

import pytest

from fedsim import progress
from fedsim.progress import PROGRESS_LINE_SECONDS, Progress


@pytest.fixture
def clock(monkeypatch):
    """perf_counter as the test sets it: ``clock[0]`` seconds."""
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


def test_on_a_pipe_a_line_every_few_seconds_at_most_and_the_last(clock, capsys):
    assert PROGRESS_LINE_SECONDS == 5.0
    bar = Progress("synthetic", 10, 2, "round", quiet=False)      # 2 rounds were done before this session
    # round 3 takes 20 s (the kernels compiling), the later ones 1 s
    for completed, moment in ((3, 120.0), (4, 121.0), (5, 122.0), (6, 126.5), (10, 127.0)):
        clock[0] = moment
        bar.update(completed, "loss 0.5")
    bar.close()
    # no time left after the first round; then left = rounds left / (rounds since the first / seconds
    # since the first), the first round's 20 s left out: 4 / (3 / 6.5), not 4 / (4 / 26.5) = 26 s
    assert capsys.readouterr() == ("", "fedsim: synthetic: round 3/10  loss 0.5  (20 s)\n"
                                       "fedsim: synthetic: round 6/10  loss 0.5  (26 s, ~9 s left)\n"
                                       "fedsim: synthetic: round 10/10  loss 0.5  (27 s)\n")


def test_a_line_of_its_own_with_extra_fields(clock, capsys):
    bar = Progress("sweep", 4, 0, "run", quiet=False, line="{completed}/{total} runs done, {failed} failed ({timing})")
    for completed, moment in ((1, 102.0), (2, 110.0)):
        clock[0] = moment
        bar.update(completed, "failed 1", failed=1)
    assert capsys.readouterr().err == ("fedsim: sweep: 1/4 runs done, 1 failed (2 s)\n"
                                       "fedsim: sweep: 2/4 runs done, 1 failed (10 s, ~16 s left)\n")


def test_quiet_says_nothing(clock, capsys):
    bar = Progress("synthetic", 2, 0, "round", quiet=True)
    note = bar.note_if_slow(0.0, "slow")
    for completed in (1, 2):
        bar.update(completed, "")
    time.sleep(0.05)
    assert not note.is_alive() and capsys.readouterr() == ("", "")


def test_a_note_when_slow_unless_cancelled_in_time(capsys):
    bar = Progress("synthetic", 2, 0, "round", quiet=False)
    bar.note_if_slow(60.0, "never said").cancel()
    bar.note_if_slow(0.0, "compiling").join(5)
    assert capsys.readouterr().err == "compiling\n"


def test_on_a_terminal_a_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = Progress("synthetic", 3, 1, "round", quiet=False)
    bar.note_if_slow(0.0, "compiling").join(5)
    for completed in (2, 3):
        bar.update(completed, "loss 0.25")
    bar.close()
    text = terminal.getvalue()
    assert "\r" in text and "synthetic" in text and "3/3" in text and "loss 0.25" in text, text
    assert "compiling\n" in text and "fedsim: synthetic" not in text
