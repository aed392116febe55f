"""benchmarks/data_curve.py: nested training subsets that keep the held-out volumes out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curve():
    return load_benchmark("data_curve")


def test_subsets_are_nested_and_end_at_the_campaign_set(curve):
    subsets = [curve.SUBSETS[k] for k in sorted(curve.SUBSETS, key=int)]
    for (small, _), (large, _) in zip(subsets, subsets[1:], strict=False):
        assert set(small) < set(large)
    full, bundled = subsets[-1]
    assert bundled and set(full) == set(curve.TRAINING)
    run_sh = (ROOT / "scripts" / "campaign" / "run.sh").read_text()
    labels = re.search(r"--participant-label ([\w ]+?) --validation-label", run_sh).group(1)
    assert set(labels.split()) == set(full)  # the campaign's own volumes


def test_held_out_volumes_never_train(curve):
    quality = load_benchmark("quality")
    held_out = {*quality.VALIDATION_SET, *quality.TEST_SET}
    for participants, _ in curve.SUBSETS.values():
        assert not held_out & set(participants)
    # uih01 and uih02 may be one person: never one in and the other held out
    assert not {"uih01", "uih02"} & held_out


def test_gains_are_read_per_case_in_order(curve):
    report = {"cases": [{"methods": {"cubic": {"gain_db": 0.0}, "n1": {"gain_db": 1.5},
                                     "n8": {"gain_db": 2.0}}},
                        {"methods": {"cubic": {"gain_db": 0.0}, "n1": {"gain_db": 0.5},
                                     "n8": {"gain_db": 1.0}}}]}
    assert curve.gains_of(report, "n1") == [1.5, 0.5]
    assert curve.gains_of(report, "n8") == [2.0, 1.0]
