"""Consistency with the input: one shrunk back-projection toward the scan's own slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bids_mrisr.image.spline import cubic_resample_axis
from bids_mrisr.sr.checkpoint import save_checkpoint
from bids_mrisr.sr.consistency import input_slices, project_onto_input, reacquire
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.inference import run_model
from bids_mrisr.sr.networks import build_model
from bids_mrisr.sr.options import SROptions
from tests.sr.test_acquisition_input import _conditioned_student, _config
from tests.sr.test_regression import _sharp_phantom


def _scan(truth: np.ndarray, factor: float, noise: float = 0.0, seed: int = 0,
          ) -> tuple[np.ndarray, np.ndarray]:
    """A box-profile thick-slice scan of ``truth`` along axis 2, cubic-upsampled onto its grid,
    and its slices."""
    params = Degradation(axis=2, factor=factor, profile="box", noise_fraction=noise)
    low, _ = degrade(truth, (1.0, 1.0, 1.0), params, np.random.default_rng(seed))
    return cubic_resample_axis(low, 2, factor, truth.shape[2]), low


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_the_scans_own_slices_are_read_back_from_its_grid() -> None:
    truth = _sharp_phantom((32, 32, 48))
    volume, low = _scan(truth, 3.0)
    assert np.allclose(input_slices(volume, 2, 3.0), low, atol=1e-5)  # integer factor: exact
    volume, low = _scan(truth, 2.5)
    assert input_slices(volume, 2, 2.5).shape == low.shape
    assert _error(input_slices(volume, 2, 2.5), low) < 0.05 * _error(low, low.mean())


def test_a_step_moves_a_blurred_estimate_toward_the_truth_and_the_scan() -> None:
    truth = _sharp_phantom((40, 40, 48))
    volume, _ = _scan(truth, 3.0)
    out, report = project_onto_input(volume, volume, 2, 3.0, "box", noise_sigma=0.0)
    assert report.residual_after < 0.5 * report.residual_before
    assert report.kept_fraction == pytest.approx(1.0)  # no noise: nothing is shrunk
    assert _error(out, truth) < 0.99 * _error(volume, truth)  # measured: 0.976


def test_the_truth_stays_put_and_noise_is_mostly_shrunk_away() -> None:
    truth = _sharp_phantom((40, 40, 48))
    clean, _ = _scan(truth, 3.0)
    out, report = project_onto_input(truth, clean, 2, 3.0, "box", noise_sigma=0.0)
    assert report.residual_before < 1e-3 and _error(out, truth) < 1e-3
    noisy, low = _scan(truth, 3.0, noise=0.05, seed=1)
    sigma = 0.05 * float(np.percentile(reacquire(truth, 2, 3.0, "box", None), 99.5))
    shrunk, report = project_onto_input(truth, noisy, 2, 3.0, "box", noise_sigma=sigma)
    unshrunk, _ = project_onto_input(truth, noisy, 2, 3.0, "box", noise_sigma=0.0)
    assert report.kept_fraction < 0.5
    assert _error(shrunk, truth) < 0.6 * _error(unshrunk, truth)


def test_an_unknown_shape_is_simulated_as_the_box_heavy_mixture() -> None:
    from bids_mrisr.sr.consistency import UNKNOWN_BOX_WEIGHT

    truth = _sharp_phantom((24, 24, 36))
    box, gaussian = (reacquire(truth, 2, 3.0, shape, None) for shape in ("box", "gaussian"))
    mixed = reacquire(truth, 2, 3.0, "unknown", None)
    assert np.allclose(mixed, UNKNOWN_BOX_WEIGHT * box + (1 - UNKNOWN_BOX_WEIGHT) * gaussian,
                       atol=1e-6)
    assert not np.allclose(box, gaussian, atol=1e-3)  # the two shapes do differ here
    with pytest.raises(ValueError, match="profile"):
        reacquire(truth, 2, 3.0, "triangle", None)


def test_the_engine_steps_for_one_thick_axis_with_the_told_or_mixed_profile(tmp_path) -> None:
    truth = _sharp_phantom((48, 48, 48))
    scan, _ = _scan(truth, 3.0)
    save_checkpoint(_conditioned_student(), tmp_path / "ck")
    options = SROptions(weights=tmp_path / "ck", device="cpu", blurred_axes=(2,),
                        axis_factors=(1.0, 1.0, 3.0), flip_views=1)
    told = run_model(scan, dataclasses.replace(options, slice_profile="box"))
    step = told.info["InputConsistency"]
    assert step["SliceProfile"] == "box" and step["ResidualRMSAfter"] < step["ResidualRMSBefore"]
    off = run_model(scan, dataclasses.replace(options, slice_profile="box",
                                              input_consistency=False))
    assert "InputConsistency" not in off.info
    assert not np.allclose(told.image, off.image)
    read = run_model(scan, options).info  # this phantom's spectrum reads box clearly
    assert read["AcquisitionInput"][0]["SliceProfile"].startswith("box (estimated")
    assert read["InputConsistency"]["SliceProfile"] == "box"
    save_checkpoint(build_model(_config(0)).eval(), tmp_path / "blind")  # reads no spectrum
    unknown = run_model(scan, dataclasses.replace(options, weights=tmp_path / "blind")).info
    assert unknown["InputConsistency"]["SliceProfile"] == "unknown: 0.75 box + 0.25 Gaussian"
    iso = run_model(scan, dataclasses.replace(options, slice_profile="box", blurred_axes=(0, 2),
                                              axis_factors=(3.0, 1.0, 3.0)))
    assert "InputConsistency" not in iso.info  # several coarse axes: not one thick axis
