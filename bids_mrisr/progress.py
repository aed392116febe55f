"""Progress for long work: a bar with ETA on a terminal, periodic log lines otherwise.

Cluster jobs write to files, where a redrawn bar is noise; there a line every few percent (and
at most every ``interval`` seconds) tells the user the job is alive and when it will end.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

LOGGER = logging.getLogger("bids_mrisr")


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _terminal_has_room() -> bool:
    """A bar needs a terminal with columns (a 0-column pseudo-terminal would show nothing)."""
    if not sys.stderr.isatty():
        return False
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except OSError:
        return False


class Progress:
    """Callable ``progress(done, total)``; pick the display from whether stderr is a terminal."""

    def __init__(self, description: str, unit: str = "step", interval: float = 30.0,
                 use_bar: bool | None = None) -> None:
        self.description = description
        self.unit = unit
        self.interval = interval
        self.use_bar = _terminal_has_room() if use_bar is None else use_bar
        self._bar = None
        self._start = time.monotonic()
        self._last_log = -float("inf")
        self._last_done = 0
        self._total: int | None = None
        self._first: tuple[float, int] | None = None
        """Time and count of the first report of this phase: the ETA is measured from it, so
        set-up before the first step (loading, estimation, warm-up) does not inflate it."""

    def _new_phase(self, total: int) -> None:
        self.close()
        self._start = time.monotonic() if self._total is not None else self._start
        self._last_log = -float("inf")
        self._last_done = 0
        self._total = total
        self._first = None

    def __call__(self, done: int, total: int) -> None:
        if self._total is None or done < self._last_done:
            self._new_phase(total)  # e.g. adaptation (300 steps), then sampling (24 steps)
        # A changed total alone is the same phase: time-capped training re-plans its step
        # count at every step.
        self._total = total
        if self._first is None:
            self._first = (time.monotonic(), done)
        if self.use_bar:
            self._update_bar(done, total)
        else:
            self._maybe_log(done, total)

    def _update_bar(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.description, unit=self.unit,
                             dynamic_ncols=True, leave=False)
        self._bar.total = total
        self._bar.update(done - self._last_done)
        self._last_done = done
        if done >= total:
            self.close()

    def _maybe_log(self, done: int, total: int) -> None:
        self._last_done = done
        now = time.monotonic()
        finished = done >= total
        if not finished and now - self._last_log < self.interval:
            return
        self._last_log = now
        elapsed = now - self._start
        first_time, first_done = self._first or (now, done)
        rate_known = done > first_done and now > first_time
        eta = (now - first_time) / (done - first_done) * (total - done) if rate_known else 0.0
        eta_text = _format_seconds(eta) if rate_known or finished else "?"
        LOGGER.info("%s: %d/%d %ss (%.0f%%), elapsed %s, ETA %s", self.description, done, total,
                    self.unit, 100.0 * done / max(total, 1), _format_seconds(elapsed), eta_text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_callback(description: str, unit: str = "step") -> Callable[[int, int], None]:
    return Progress(description, unit)
