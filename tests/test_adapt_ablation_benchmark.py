"""benchmarks/adapt_ablation.py adapts and runs the weights the app's engine would pick."""

from __future__ import annotations

import json

from bids_mrisr.sr.weights import default_weights
from tests.conftest import load_benchmark


def _sha256(folder) -> str:
    return json.loads((folder / "model.json").read_text())["sha256"]


def test_the_ablation_picks_the_box_variant_for_a_scan_read_as_box():
    ablation = load_benchmark("adapt_ablation")
    weights = ablation.AppWeights()
    root = default_weights("student")
    told_box = weights.for_scan((2,), told_box=True)
    assert told_box.sha256 == _sha256(root / "box") != _sha256(root)
    assert weights.for_scan((0,), told_box=False).sha256 == _sha256(root)
    assert weights.for_scan((0, 1, 2), told_box=False).sha256 == _sha256(root / "multi-axis")
    assert weights.for_scan((1,), told_box=True) is told_box  # each checkpoint loaded once
