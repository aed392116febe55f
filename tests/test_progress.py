"""Progress: periodic log lines with ETA when not on a terminal, a bar when asked."""

from __future__ import annotations

import logging

import pytest

from bids_mrisr.progress import Progress


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def log_messages():
    """The app logger's INFO messages during the test, in order."""
    logger = logging.getLogger("bids_mrisr")
    handler = _ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_log_lines_when_not_a_terminal(log_messages):
    progress = Progress("sampling", interval=3600.0, use_bar=False)
    for done in range(1, 11):
        progress(done, 10)
    # The first call logs, the interval suppresses the rest, the last (100%) always logs.
    assert len(log_messages) == 2
    assert log_messages[0].startswith("sampling: 1/10 steps (10%)")
    assert "ETA" in log_messages[0]
    assert log_messages[1].startswith("sampling: 10/10 steps (100%)")


def test_bar_on_terminal(capsys):
    progress = Progress("sampling", use_bar=True)
    for done in range(1, 4):
        progress(done, 3)
    err = capsys.readouterr().err
    assert "sampling:" in err and "/3 [" in err  # a tqdm bar was drawn (then cleared)


def test_a_second_phase_starts_afresh_and_set_up_time_does_not_inflate_the_eta(
        monkeypatch, log_messages):
    """Adaptation (300 steps) then sampling (24 steps) share one callback; the seconds spent
    before the first step (estimation, loading) must not turn into an ETA of half an hour."""
    import bids_mrisr.progress as progress_module

    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    progress = Progress("run", interval=0.0, use_bar=False)
    clock[0] = 5.0  # set-up before the first step
    progress(1, 300)
    clock[0] = 5.1
    progress(2, 300)  # 0.1 s per step from here on
    clock[0] = 35.0
    progress(300, 300)
    clock[0] = 36.0
    progress(1, 24)  # the next phase
    clock[0] = 37.0
    progress(2, 24)
    assert "ETA ?" in log_messages[0]  # one report: no rate yet
    assert "ETA 00:29" in log_messages[1]  # 298 steps x 0.1 s, not 298 x 5 s
    assert log_messages[3].startswith("run: 1/24 steps") and "ETA ?" in log_messages[3]
    assert "ETA 00:22" in log_messages[4] and "elapsed 00:01" in log_messages[4]


def test_bar_restarts_for_a_second_phase(capsys):
    progress = Progress("run", use_bar=True)
    for done in range(1, 4):
        progress(done, 3)
    progress(1, 2)
    assert progress._bar.n == 1 and progress._bar.total == 2  # counts from zero again
    progress(2, 2)
    err = capsys.readouterr().err
    assert "0/3 [" in err and "0/2 [" in err  # two bars were drawn


def test_a_total_replanned_at_every_step_is_the_same_phase(monkeypatch, log_messages):
    """Time-capped training re-estimates its step count at every step: that must not start a
    new phase (which logged every step with 'elapsed 00:00, ETA ?')."""
    import bids_mrisr.progress as progress_module

    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    progress = Progress("training", interval=30.0, use_bar=False)
    for done in range(1, 603):
        clock[0] = 0.1 * done
        progress(done, 40000 + done % 7)  # the plan wobbles step to step
    assert len(log_messages) == 3  # t = 0.1 s, 30.1 s and 60.1 s: periodic, not per step
    assert "elapsed 01:00" in log_messages[-1] and "ETA ?" not in log_messages[-1]
