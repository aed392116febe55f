"""Running the nipype graph so that Ctrl-C or SIGTERM stops it cleanly at any point.

The signal raises :class:`~bids_mrisr.runtime.interrupts.Interrupted` in the main process; nipype's
Linear plugin would record it as a node crash and go on with the next node, so the plugin's
status callback raises it again. Then the parallel workers are stopped, and what the
interruption left is removed: crash files that only say "interrupted" and temporary files of
writes that never finished. The nodes that finished stay cached for the rerun, and the SR node
keeps its finished batches (sr/resume.py).
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

from bids_mrisr.runtime.atomic import leftover_temporaries
from bids_mrisr.runtime.interrupts import Interrupted, raise_if_interrupted

LOGGER = logging.getLogger("bids_mrisr")
LOCAL_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc")
"""The plugins that run nodes on this machine and call a status callback."""
WORKER_GRACE_S = 10.0


def _stop_when_interrupted(_node: Any, _status: str) -> None:
    raise_if_interrupted()


def run_workflow(workflow: Any, plugin: str, plugin_args: dict, crash_dir: Path,
                 started: float, written: list[Path]) -> None:
    """``workflow.run``; on an interruption clean up (see module docstring) and re-raise.

    ``written``: the folders this run writes outputs into (whose leftovers are its own)."""
    if plugin in LOCAL_PLUGINS and "status_callback" not in plugin_args:
        plugin_args = {**plugin_args, "status_callback": _stop_when_interrupted}
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except Interrupted:
        stop_workers()
        _remove_interruption_traces(crash_dir, started, written)
        raise


def stop_workers() -> None:
    """Terminate the parallel plugin's worker processes (each leaves without a traceback).

    The pool then logs each pending node as a ``BrokenProcessPool`` traceback: expected here,
    so that logger is silenced first."""
    logging.getLogger("concurrent.futures").disabled = True
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(WORKER_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join(WORKER_GRACE_S)


def _remove_interruption_traces(crash_dir: Path, started: float, written: list[Path]) -> None:
    for crash in crash_dir.glob("crash-*.txt"):
        try:
            if crash.stat().st_mtime >= started and _says_interrupted(crash.read_text(
                    errors="replace")):
                crash.unlink()
        except OSError:
            continue
    for folder in written:
        for leftover in leftover_temporaries(folder):
            leftover.unlink(missing_ok=True)
            LOGGER.debug("removed %s, the temporary file of an interrupted write", leftover)


def _says_interrupted(crash_text: str) -> bool:
    return "KeyboardInterrupt" in crash_text or f"{Interrupted.__name__}: interrupted" in \
        crash_text
