"""benchmarks/quality.py: validation/test sets, the seen-in-training flag, filled-slice masking."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REAL_DATA, load_benchmark, phantom_volume


@pytest.fixture(scope="module")
def quality():
    return load_benchmark("quality")


def test_sets_are_disjoint_and_held_out_still_means_validation(quality):
    assert set(quality.VALIDATION_SET) == {"colin27", "seg3d01", "philips01"}
    assert set(quality.TEST_SET) == {"adi01", "forrest01"}
    assert not set(quality.VALIDATION_SET) & set(quality.TEST_SET)
    assert tuple(quality.HELD_OUT) == quality.VALIDATION_SET  # adapt_ablation.py's default


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ["colin27", "seg3d01", "philips01"]),
    (["--set", "validation"], ["colin27", "seg3d01", "philips01"]),
    (["--set", "test"], ["adi01", "forrest01"]),
    (["--set", "all"], ["colin27", "seg3d01", "philips01", "adi01", "forrest01"]),
    (["--set", "test", "--subjects", "philips01"], ["philips01"]),
    # --subjects overrides; grouped validation, test, other (one table section each)
    (["--subjects", "forrest01", "bc01", "colin27"], ["colin27", "forrest01", "bc01"]),
])
def test_set_selection(quality, argv, expected):
    args = quality.build_parser().parse_args(argv)
    assert quality.select_subjects(args.volume_set, args.subjects) == expected


def test_set_of(quality):
    assert [quality.set_of(s) for s in ("colin27", "adi01", "forrest01", "bc01")] == [
        "validation", "test", "test", "other"]


def _weights(root: Path, volumes: list[str] | None, variant: list[str] | None = None) -> Path:
    root.mkdir(parents=True)
    provenance = {} if volumes is None else {"training_volumes": volumes}
    (root / "model.json").write_text(json.dumps({"provenance": provenance}))
    if variant is not None:
        (root / "multi-axis").mkdir()
        (root / "multi-axis" / "model.json").write_text(json.dumps(
            {"provenance": {"training_volumes": variant}}))
    return root


def test_seen_in_training_from_provenance(quality, tmp_path):
    weights = _weights(tmp_path / "student", ["sub-forrest01/anat/sub-forrest01_T1w.nii.gz",
                                              "nilearn-MNI152-T1"],
                       variant=["sub-peds01_T1w"])
    volumes = quality.training_volumes(weights)
    assert "sub-peds01_T1w" in volumes  # a variant the app may load counts too
    forrest = Path("sub-forrest01_T1w.nii.gz")
    assert quality.seen_in_training(forrest, "forrest01", volumes) is True
    assert quality.seen_in_training(Path("sub-peds01_T1w.nii.gz"), "peds01", volumes) is True
    assert quality.seen_in_training(Path("sub-adi01_T1w.nii.gz"), "adi01", volumes) is False
    # names without a path or extension, or whole subjects, match too
    assert quality.seen_in_training(forrest, "forrest01", ["sub-forrest01_T1w"]) is True
    assert quality.seen_in_training(forrest, "forrest01", ["sub-forrest01"]) is True
    assert quality.seen_in_training(forrest, "forrest01", ["sub-forrest011_T1w"]) is False
    # no weights (interp): never seen; no provenance: unknown
    assert quality.training_volumes(quality.run_weights("interp", None)) == []
    unknown = quality.training_volumes(_weights(tmp_path / "blank", None))
    assert quality.seen_in_training(forrest, "forrest01", unknown) is None


def test_seen_in_training_counts_only_the_weights_that_ran(quality, tmp_path):
    """A variant trained on a volume flags it only in the cases where the app ran it."""
    weights = _weights(tmp_path / "student", ["sub-peds01_T1w"],
                       variant=["sub-forrest01_T1w"])
    forrest = Path("sub-forrest01_T1w.nii.gz")
    assert quality.seen_in_training(forrest, "forrest01", quality.training_volumes(weights))
    main = quality.ran_training_volumes(weights, None)
    assert quality.seen_in_training(forrest, "forrest01", main) is False
    variant = quality.ran_training_volumes(weights, "multi-axis")
    assert quality.seen_in_training(forrest, "forrest01", variant) is True
    assert quality.ran_training_volumes(weights, "box") is None  # no such folder: unknown
    assert quality.ran_training_volumes(None, None) == []  # interp


def test_no_shipped_network_has_seen_a_validation_or_test_volume(quality):
    shipped = quality.run_weights("student", None)
    assert shipped is not None
    volumes = quality.training_volumes(shipped)
    assert len(volumes) >= 5  # the main weights' and every variant's volumes were read
    seen = {s for s in (*quality.VALIDATION_SET, *quality.TEST_SET)
            if quality.seen_in_training(Path(f"sub-{s}_T1w.nii.gz"), s, volumes)}
    assert seen == set()


def _case(volume: str, case: str, gain: float, seen: bool) -> dict:
    cubic = {"psnr": 30.0, "ssim": 0.9, "seconds": 0.1, "gain_db": 0.0,
             "seen_in_training": False}
    student = {"psnr": 30.0 + gain, "ssim": 0.91, "seconds": 5.0, "gain_db": gain,
               "seen_in_training": seen}
    return {"volume": volume, "set": "validation" if volume == "colin27" else "test",
            "case": case, "seen_in_training": {"student": seen},
            "methods": {"cubic": cubic, "student": student}}


def test_summary_sections_leave_seen_cases_out(quality):
    results = [_case("colin27", "a", 1.0, False), _case("colin27", "b", 0.5, False),
               _case("adi01", "a", 0.2, False), _case("adi01", "b", -0.1, False),
               _case("forrest01", "a", 5.0, True)]
    lines = quality.summary_lines(results)
    text = "\n".join(lines)
    assert lines[0].startswith("VALIDATION (these volumes chose the model): colin27")
    test_at = next(i for i, line in enumerate(lines) if line.startswith("TEST"))
    assert lines[test_at].startswith("TEST (scored once per shipped model, reported as is): "
                                     "adi01, forrest01; 3 cases")
    student_test = next(line for line in lines[test_at:] if line.startswith("student"))
    assert student_test.split()[1:3] == ["+0.05", "-0.10"]  # forrest01's +5 dB left out
    assert "adi01 b" in student_test and student_test.endswith("1 seen in training")
    student_val = next(line for line in lines[:test_at] if line.startswith("student"))
    assert student_val.split()[1:3] == ["+0.75", "+0.50"]
    assert "seen in training" not in student_val
    assert "seen in training" in quality.row_line(results[-1], "student")
    assert "seen in training" not in quality.row_line(results[-1], "cubic")
    assert text.count("TEST") == 1


def test_weights_variant_is_read_from_the_sidecar_and_shown(quality):
    """Which weights the app ran is recorded per case: the box variant for scans told box."""
    from bids_mrisr.sr.provenance import add_weights

    info: dict = {}
    add_weights(info, {}, "box", None)
    assert quality.weights_variant_of(info) == "box"
    assert quality.weights_variant_of({}) is None
    row = _case("colin27", "box-a2-3x", 1.0, False)
    row["methods"]["student"]["weights_variant"] = "box"
    assert quality.row_line(row, "student").endswith("box weights")
    assert "weights" not in quality.row_line(row, "cubic")


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def test_masked_score_ignores_a_filled_slice(quality, tmp_path):
    """A slice of the stored truth filled with the mean of its neighbours (as in adi01): the
    unmasked score counts it as an error of a perfect estimate, the masked one ignores it."""
    real = phantom_volume((24, 20, 18), seed=3)
    k = 9
    stored = real.copy()
    stored[:, :, k] = 0.5 * (real[:, :, k - 1] + real[:, :, k + 1])
    # stored P, I, R like adi01, so stored axis 2 is the truth's axis 0
    affine = np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])
    path = _write(tmp_path / "stored.nii.gz", stored, affine)
    truth, _, _ = quality.truth_volume(path)
    real_truth, _, _ = quality.truth_volume(_write(tmp_path / "real.nii.gz", real, affine))
    valid = quality.truth_valid(path, ((2, k),))
    assert valid.shape == truth.shape
    assert np.array_equal(np.argwhere(~valid.all(axis=(1, 2))).ravel(), [k])
    plain = quality.score(real_truth, truth)
    masked = quality.score(real_truth, truth, valid)
    assert math.isfinite(plain["psnr"]) and plain["ssim"] < 1.0
    assert masked["psnr"] == math.inf  # the perfect estimate is perfect where the truth is real
    assert masked["ssim"] == pytest.approx(1.0, abs=1e-6)
    # all voxels valid: exactly score_in_head (the validation figures do not move)
    everywhere = np.ones_like(valid)
    estimate = truth + np.random.default_rng(0).normal(0, 5, truth.shape).astype(np.float32)
    assert quality.score(estimate, truth, everywhere) == pytest.approx(
        quality.score(estimate, truth))
    assert quality.truth_valid(path, ()) is None


def test_valid_mask_covers_every_voxel_the_slice_influences(quality, tmp_path):
    """Where the flagged axis is resampled (not the finest spacing) the slice spreads over
    several truth slices: the mask must cover every voxel that changes with it."""
    rng = np.random.default_rng(1)
    base = phantom_volume((20, 22, 16), seed=5)
    changed = base.copy()
    k = 7
    delta = rng.normal(0, 200, changed[:, :, k].shape).astype(np.float32)
    changed[:, :, k] += delta
    affine = np.diag([1.0, -1.0, 1.4, 1.0])  # axis 2 resampled 1.4 -> 1.0 mm, axis 1 flipped
    a, _, _ = quality.truth_volume(_write(tmp_path / "a.nii.gz", base, affine))
    b, _, _ = quality.truth_volume(_write(tmp_path / "b.nii.gz", changed, affine))
    valid = quality.truth_valid(tmp_path / "a.nii.gz", ((2, k),))
    moved = np.abs(a - b) > quality.INFLUENCE * np.abs(delta).max()  # weight > INFLUENCE
    assert moved.any() and not (moved & valid).any()
    flagged = np.argwhere(~valid.all(axis=(0, 1))).ravel()
    assert 1 < len(flagged) < 16 and abs(flagged.mean() - ((k + 0.5) * 1.4 - 0.5)) < 1.5


@pytest.mark.skipif(not (REAL_DATA / "sub-adi01").is_dir(),
                    reason=f"ds-real with sub-adi01 not found at {REAL_DATA}")
def test_adi01_filled_slice_is_where_the_benchmark_masks_it(quality):
    src = REAL_DATA / "sub-adi01" / "anat" / "sub-adi01_T1w.nii.gz"
    image = nib.load(str(src))
    (axis, index), = quality.INTERPOLATED_SLICES["adi01"]
    data = np.asanyarray(image.dataobj).astype(np.float64)
    take = lambda i: np.take(data, i, axis)  # noqa: E731
    assert np.abs(take(index) - 0.5 * (take(index - 1) + take(index + 1))).max() <= 0.5
    assert np.abs(take(index + 1) - 0.5 * (take(index) + take(index + 2))).max() > 10
    valid = quality.truth_valid(src, quality.INTERPOLATED_SLICES["adi01"])
    invalid = np.argwhere(~valid)
    assert (~valid).sum() == valid.shape[1] * valid.shape[2]  # one whole truth slice
    assert set(invalid[:, 0]) == {index}


def test_ensemble_names_scored_runs_and_averages_their_voxels(quality):
    """``--ensemble`` scores the mean of runs the benchmark made; a typo or a lone member is
    refused before any case runs, and members on different grids are never averaged."""
    runs = ["student", "W48"]
    assert quality._ensemble_spec("pair=student+W48", runs) == ("pair", ("student", "W48"))
    with pytest.raises(SystemExit, match="not a run: W64"):
        quality._ensemble_spec("pair=student+W64", runs)
    with pytest.raises(SystemExit, match="two or more"):
        quality._ensemble_spec("alone=student", runs)
    a, b = np.zeros((2, 3, 4), np.float32), np.full((2, 3, 4), 4.0, np.float32)
    assert np.array_equal(quality.ensemble_mean([a, b]), np.full((2, 3, 4), 2.0))
    with pytest.raises(RuntimeError, match="different grids"):
        quality.ensemble_mean([a, np.zeros((2, 3, 5), np.float32)])
