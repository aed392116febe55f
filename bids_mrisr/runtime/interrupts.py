"""Ctrl-C and SIGTERM: one exception for both, one line for the user, exit 130 or 143.

nipype turns any exception inside a node (even ``KeyboardInterrupt``) into a node failure and
goes on with the other nodes. So the signal is also remembered here, and the places that hand
control back from nipype (the SR interface, the plugin's status callback) raise it again with
:func:`raise_if_interrupted`. A worker process of a parallel plugin leaves at once and quietly:
the main process reports the interruption and stops the other workers. Standard library only,
so every layer can use it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
"""The first signal this process received (empty: none)."""
_installed_in: list[int] = []
"""The process id that installed the handlers (a forked child inherits them, not the id)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; exits with 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _in_worker() -> bool:
    """A child process started by a parallel plugin (not the process that reports): forked
    from the process that installed the handlers, or a spawned one that installed none."""
    if _installed_in:
        return _installed_in[0] != os.getpid()
    return multiprocessing.parent_process() is not None


def _handle(signum: int, _frame: FrameType | None) -> None:
    if _in_worker():
        os._exit(128 + signum)  # no traceback, no cleanup races with the main process
    if not _received:
        _received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM of this process to :class:`Interrupted` (main thread only)."""
    _received.clear()
    _installed_in[:] = [os.getpid()]
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def install_in_worker() -> None:
    """Quiet exits for a worker whose start method did not inherit the handlers (spawn); a
    no-op in the main process, whose handlers are the caller's business."""
    if multiprocessing.parent_process() is not None and signal.getsignal(
            signal.SIGTERM) is not _handle:
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` again where nipype swallowed it (no-op without a signal)."""
    if _received:
        raise Interrupted(_received[0])
