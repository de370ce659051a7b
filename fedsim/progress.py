"""Progress of a long job on stderr: a run's steps (:mod:`fedsim.runs.loop`) and a sweep's runs
(:mod:`fedsim.sweeps.execute`). This module imports nothing numerical, and tqdm only when a bar is drawn.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time

#: On a pipe or a file, a progress line at most this often (seconds).
PROGRESS_LINE_SECONDS = 5.0


def show_progress(quiet: bool) -> bool:
    """Progress bars: on unless ``quiet`` or stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


class Progress:
    """How far a job of ``total`` units has come, ``done`` of them before this session: on a terminal, a tqdm
    bar with a short postfix; on a pipe or a file, one line every :data:`PROGRESS_LINE_SECONDS` at most (and
    the last), ``fedsim: NAME: `` and then ``line`` filled in; nothing when ``quiet``.

    ``line`` is a :meth:`str.format` template with the fields ``unit``, ``completed``, ``total``,
    ``postfix``, ``timing`` (seconds so far and, from the second unit of this session on, those left:
    left = (total - completed) / rate, rate = units done since the first / seconds since the first; the
    first unit is left out, as it carries the start's costs: a run's first step compiles its kernels)
    and any extra fields given to :meth:`update`.
    """

    def __init__(self, name: str, total: int, done: int, unit: str, quiet: bool,
                 line: str = "{unit} {completed}/{total}  {postfix}  ({timing})"):
        self.name, self.total, self.unit, self.quiet, self.line = name, total, unit, quiet, line
        self.started = time.perf_counter()
        self.first: tuple[float, int] | None = None        # (moment, completed) of the session's first unit
        self.last_line = -math.inf
        self.bar = None
        if show_progress(quiet):
            from tqdm.auto import tqdm
            # Follow the terminal's size; one that reports none (0 x 0, tqdm would then hide the bar)
            # gets 100 columns and 20 rows.
            sized = shutil.get_terminal_size((0, 0)).columns > 0
            self.bar = tqdm(total=total, initial=done, desc=name, unit=unit, file=sys.stderr,
                            dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 20)

    def note_if_slow(self, seconds: float, text: str, when=lambda: True) -> threading.Timer:
        """A started timer that says ``text`` once if it is not cancelled within ``seconds`` and ``when()``
        is then true (nothing when quiet); cancel it when the slow part is over."""
        def note():
            if not when():
                return
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)
        timer = threading.Timer(seconds, note)
        timer.daemon = True
        if not self.quiet:
            timer.start()
        return timer

    def update(self, completed: int, postfix: str, **fields) -> None:
        """One more unit done, ``completed`` in all; ``postfix`` follows the bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
            return
        moment = time.perf_counter()
        if self.first is None:
            self.first = (moment, completed)
        if self.quiet or (moment - self.last_line < PROGRESS_LINE_SECONDS and completed < self.total):
            return
        self.last_line = moment
        elapsed = moment - self.started
        since, first_completed = self.first
        rate = (completed - first_completed) / (moment - since) if moment > since else 0.0
        left = f", ~{(self.total - completed) / rate:.0f} s left" if rate > 0 and completed < self.total else ""
        text = self.line.format(unit=self.unit, completed=completed, total=self.total, postfix=postfix,
                                timing=f"{elapsed:.0f} s{left}", **fields)
        print(f"fedsim: {self.name}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["PROGRESS_LINE_SECONDS", "Progress", "show_progress"]
