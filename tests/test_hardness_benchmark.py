"""benchmarks/hardness.py: case ids, the join with quality.py's JSON, and the noise ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import load_benchmark, write_volume

AXIS_2 = {"axis": 2, "factor": 3.0, "profile": "gaussian", "thickness_ratio": 1.0,
          "noise_fraction": 0.02, "isotropic": False}


@pytest.fixture(scope="module")
def hardness():
    return load_benchmark("hardness")


def test_a_case_degrades_the_truth_as_quality_py_recorded_it(hardness):
    case = hardness.case_degradation({"case": "f2.5a0bn0", "degradation": dict(
        AXIS_2, axis=0, factor=2.5, profile="box", thickness_ratio=1.2)})
    assert (case.factor, case.axis, case.profile, case.thickness_ratio) == (2.5, 0, "box", 1.2)
    with pytest.raises(SystemExit, match="single-axis"):
        hardness.case_degradation({"case": "f2aisogn0",
                                   "degradation": dict(AXIS_2, isotropic=True)})


def _head(seed: int, noise: float) -> np.ndarray:
    """A smooth head-like blob in air, 1 mm isotropic, with white noise of ``noise`` x peak."""
    grid = np.indices((40, 40, 40)).astype(np.float32) - 19.5
    head = (np.sqrt((grid ** 2).sum(axis=0)) < 15).astype(np.float32)
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).random((40, 40, 40)), 2)
    volume = head * (0.6 + 2 * texture).astype(np.float32)
    volume += noise * np.random.default_rng(seed + 10).standard_normal(volume.shape)
    return np.clip(volume, 0, None) * 1000


def test_the_truths_noise_ranks_volumes_and_joins_their_gains(hardness, tmp_path):
    noises = {"a": 0.005, "b": 0.02, "c": 0.04, "d": 0.08}
    for seed, (name, noise) in enumerate(noises.items()):
        write_volume(tmp_path / f"sub-{name}" / "anat" / f"sub-{name}_T1w.nii.gz",
                     _head(seed, noise), zooms=(1.0, 1.0, 1.0))
    cases = [{"volume": name, "contrast": "T1w", "set": "validation", "case": "f3a2gn20",
              "degradation": AXIS_2,
              "methods": {"cubic": {"psnr": 25.0, "gain_db": 0.0},
                          "student": {"psnr": 27.0, "gain_db": 3.0 - 20 * noise,
                                      "seen_in_training": False}}}
             for name, noise in noises.items()]
    cases.append({**cases[0], "case": "f3a0gn20"})  # another case: not joined
    results = tmp_path / "quality.json"
    results.write_text(json.dumps({"cases": cases}))
    out = tmp_path / "hardness.json"
    assert hardness.main(["--data", str(tmp_path), "--results", str(results),
                          "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["volume"]: row for row in report["volumes"]}
    assert sorted(rows) == sorted(noises)
    assert all(row["in_plane_axes"] == [0, 1] for row in rows.values())  # the case's thick axis
    measured = [rows[name]["truth_noise"] for name in noises]
    assert measured == sorted(measured)  # the estimate ranks the added noise
    assert report["spearman"]["truth_noise"]["rho"] == pytest.approx(-1.0)
    assert all(rows[n]["noise_ceiling_db"] > rows[m]["noise_ceiling_db"]
               for n, m in zip("abc", "bcd", strict=True))
