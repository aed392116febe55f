"""Exit codes of the command line, following the BIDS Apps execution spec and sysexits.h.

Documented for users in docs/usage.md; keep the two in step.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # some runs failed; the others were processed
    INVALID_BIDS = 16  # the input dataset is not valid BIDS
    UNKNOWN_LEVEL = 17  # analysis level is not participant or group
    NOTHING_SELECTED = 18  # filters (labels, sessions, filter file) selected nothing
    USAGE = 64  # bad arguments, incl. output/work dir inside bids_dir
    BAD_DATA = 65  # every selected input is unusable data
    NO_INPUT = 66  # no T1w/T2w runs in the dataset
    NOT_ENOUGH_MEMORY = 71  # a grid needs more memory than --mem (or the machine) even in tiles
    CANT_CREATE = 73  # cannot create an output file or folder
    IO_ERROR = 74  # input/output error while reading or writing
    INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as a shell reports it
    TERMINATED = 143  # SIGTERM (a scheduler's stop): 128 + 15


class UserError(Exception):
    """An error caused by the user's input: shown as one line, never as a traceback."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
