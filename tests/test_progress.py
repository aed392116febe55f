"""Progress: periodic log lines with ETA when not on a terminal, a bar when asked."""

from __future__ import annotations

import logging

from bids_mrisr.progress import Progress


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_log_lines_when_not_a_terminal():
    logger = logging.getLogger("bids_mrisr")
    handler = _ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        progress = Progress("sampling", interval=3600.0, use_bar=False)
        for done in range(1, 11):
            progress(done, 10)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    # The first call logs, the interval suppresses the rest, the last (100%) always logs.
    assert len(handler.messages) == 2
    assert handler.messages[0].startswith("sampling: 1/10 steps (10%)")
    assert "ETA" in handler.messages[0]
    assert handler.messages[1].startswith("sampling: 10/10 steps (100%)")


def test_bar_on_terminal(capsys):
    progress = Progress("sampling", use_bar=True)
    for done in range(1, 4):
        progress(done, 3)
    err = capsys.readouterr().err
    assert "sampling:" in err and "/3 [" in err  # a tqdm bar was drawn (then cleared)
