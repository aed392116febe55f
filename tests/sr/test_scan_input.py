"""Networks told what each pass's input shows: its noise level and the axes still coarse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_mrisr.sr.acquisition import noise_sigma, pass_noise_sigma
from bids_mrisr.sr.checkpoint import save_checkpoint
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.inference import run_loaded
from bids_mrisr.sr.networks import build_model
from bids_mrisr.sr.networks.config import (
    NOISE_CODE_CENTRE,
    NOISE_CODE_STEP,
    SCAN_FEATURES,
    acquisition_code,
)
from bids_mrisr.sr.objectives import predict_mean
from bids_mrisr.sr.options import SROptions
from bids_mrisr.sr.pairs import PairSampler, simulate_cubic
from bids_mrisr.sr.training.regression import _warm_start
from tests.sr.test_acquisition_input import _conditioned_student, _config
from tests.sr.test_regression import _sharp_phantom


def _coded(noise: float) -> float:
    return min(max((noise - NOISE_CODE_CENTRE) / NOISE_CODE_STEP, -2.0), 4.0)


def test_scan_code_layout() -> None:
    assert acquisition_code(3.0, width=SCAN_FEATURES) == [0.0] * 5  # typical noise, one axis
    assert acquisition_code(5.0, "box", 1.3, noise=0.035, coarse_others=2,
                            width=SCAN_FEATURES) == pytest.approx([1, 1, 1, 2, 2])
    assert acquisition_code(3.0, noise=1.0, width=SCAN_FEATURES)[3] == 4.0  # clipped
    assert acquisition_code(3.0, noise=0.0, width=SCAN_FEATURES)[3] == pytest.approx(-1.5)
    assert acquisition_code(3.0, noise=0.05) == [0.0, 0.0, 0.0]  # a told-only code ignores it
    with pytest.raises(ValueError, match="entries"):
        acquisition_code(3.0, width=4)


def test_a_told_checkpoint_widens_to_the_scan_code_computing_the_same(tmp_path) -> None:
    told = _conditioned_student(seed=2)
    save_checkpoint(told, tmp_path / "told")
    wide = build_model(_config(SCAN_FEATURES))
    _warm_start(wide, wide.config, tmp_path / "told")
    wide.eval()
    cond = torch.randn(2, told.config.in_condition_channels, 16, 16)
    short = torch.tensor([acquisition_code(2.0, "box", 1.2), acquisition_code(4.5, "gaussian")])
    long = torch.cat([short, torch.tensor([[3.0, 2.0], [-1.0, 1.0]])], 1)
    with torch.no_grad():
        torch.testing.assert_close(predict_mean(wide, cond, long),
                                   predict_mean(told, cond, short), rtol=0, atol=1e-6)


def _coarse_axes(target: np.ndarray, hr: np.ndarray, thick: int) -> list[int]:
    """Axes along which ``target`` kept clearly less of ``hr``'s detail energy than along
    ``thick``, which the pass restores and so is sharp in its target."""
    def kept(axis: int) -> float:
        return float((np.diff(target, axis=axis) ** 2).mean()
                     / (np.diff(hr, axis=axis) ** 2).mean())

    return [a for a in range(3) if a != thick and kept(a) < 0.8 * kept(thick)]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_training_reads_each_simulated_input_as_the_app_reads_the_scan(rate: float) -> None:
    hr = _sharp_phantom((24, 24, 24))
    for seed in range(4):
        sampler = PairSampler([hr], 1, 10.0, crop=16, seed=seed, refresh_every=10**9,
                              pool_size=1, remap_intensities=False, multi_axis_rate=rate,
                              factor_range=(3.0, 3.0), code_width=SCAN_FEATURES)
        target, cubic, params = sampler.pool[0]
        _, _, code = sampler.sample_with_acquisition(6)
        assert code.shape == (6, SCAN_FEATURES)
        coarse = _coarse_axes(target, hr, params.axis)
        assert bool(coarse) == bool(rate)
        expected = _coded(pass_noise_sigma(cubic, params.axis, dict.fromkeys(coarse, 3.0)))
        assert code[:, 3].tolist() == pytest.approx([expected] * 6, abs=1e-6)
        assert code[:, 4].tolist() == [float(len(coarse))] * 6


def test_the_noise_is_read_on_the_grid_the_still_coarse_axes_were_acquired_on() -> None:
    hr = _sharp_phantom((48, 48, 48))
    readings = {}
    for noise in (0.0, 0.03):
        scan = simulate_cubic(hr, Degradation(axis=0, factor=2.0, noise_fraction=noise),
                              np.random.default_rng(0), also=(1, 2))
        readings[noise] = (noise_sigma(scan, 0), pass_noise_sigma(scan, 0, {1: 2.0, 2: 2.0}))
    fine_grid_rise = readings[0.03][0] - readings[0.0][0]
    coarse_grid_rise = readings[0.03][1] - readings[0.0][1]
    assert coarse_grid_rise > 4 * fine_grid_rise > 0  # measured 0.0132 against 0.0020
    assert pass_noise_sigma(hr, 0, {0: 3.0}) == noise_sigma(hr, 0)  # the pass's own axis


def test_each_pass_is_told_its_input_noise_and_the_axes_still_coarse() -> None:
    hr = _sharp_phantom((24, 24, 24))
    rng = np.random.default_rng(0)
    scan = simulate_cubic(hr, Degradation(axis=0, factor=2.0, noise_fraction=0.03), rng,
                          also=(1, 2))
    torch.manual_seed(3)
    model = build_model(_config(SCAN_FEATURES)).eval()
    with torch.no_grad():
        model.unet.acquisition.weight.normal_(0, 1.0)
    options = SROptions(blurred_axes=(0, 1, 2), axis_factors=(2.0, 2.0, 2.0))
    result = run_loaded(scan, model, model.config, options)
    told = result.info["AcquisitionInput"]
    assert [entry["OtherCoarseAxes"] for entry in told] == [2, 1, 0]
    assert told[0]["InputNoise"] == pytest.approx(
        pass_noise_sigma(scan, 0, {1: 2.0, 2: 2.0}), abs=1e-5)
    assert all(entry["InputNoise"] >= 0 for entry in told)
    # the reading reaches the network: deaf to the last two entries, it restores otherwise
    with torch.no_grad():
        model.unet.acquisition.weight[:, 3:] = 0
    deaf = run_loaded(scan, model, model.config, options)
    assert np.abs(result.image - deaf.image).max() > 1e-3
