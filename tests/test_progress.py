"""Progress: periodic log lines with ETA when not on a terminal, a bar when asked."""

from __future__ import annotations

import logging

from bids_mrisr.progress import Progress


def test_log_lines_when_not_a_terminal(caplog):
    logger = logging.getLogger("bids_mrisr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="bids_mrisr"):
            progress = Progress("sampling", interval=3600.0, use_bar=False)
            for done in range(1, 11):
                progress(done, 10)
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    # The first call logs, the interval suppresses the rest, the last (100%) always logs.
    assert len(lines) == 2
    assert lines[0].startswith("sampling: 1/10 steps (10%)") and "ETA" in lines[0]
    assert lines[1].startswith("sampling: 10/10 steps (100%)")


def test_bar_on_terminal(capsys):
    progress = Progress("sampling", use_bar=True)
    for done in range(1, 4):
        progress(done, 3)
    err = capsys.readouterr().err
    assert "sampling" in err and "3/3" in err
