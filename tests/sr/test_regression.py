"""The plain-regression (posterior-mean) path: it must learn, and the engine must run it as
trained (one deterministic pass, planes containing the thick axis, thick axis along rows)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from bids_mrisr.sr.engine import SROptions
from bids_mrisr.sr.geometry import anisotropy, blurred_axes
from bids_mrisr.sr.inference import run_loaded
from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.objectives import mean_regression_loss
from bids_mrisr.sr.training.evaluate import evaluate_volume
from bids_mrisr.sr.training.regression import (
    RegressionRecipe,
    train_mean_regressor,
)


def _sharp_phantom(shape=(48, 48, 48), seed=0) -> np.ndarray:
    """Head-like ellipsoid with sharp-edged inclusions: detail that cubic cannot restore."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.85, 0.9, 0.9), strict=True)))
    data = np.where(r < 1.0, 0.5, 0.0) + np.where(r < 0.85, 0.2, 0.0)
    for _ in range(30):
        c = rng.uniform(-0.6, 0.6, 3)
        rad = rng.uniform(0.05, 0.15)
        blob = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)))
        data += np.where(blob < rad, rng.uniform(-0.2, 0.3), 0.0)
    return np.clip(data, 0, None).astype(np.float32)


def test_small_regressor_beats_cubic_on_its_training_phantom(tmp_path) -> None:
    torch.manual_seed(0)
    vol = _sharp_phantom()
    config = dataclasses.replace(ModelConfig.tiny_student(), base_width=8, prediction_type="mean")
    start = time.perf_counter()
    train_mean_regressor([vol], config, tmp_path / "ckpt", RegressionRecipe(
        steps=700, batch_size=8, crop=32, seed=0, lr=3e-3, threads=1, factor_range=(2.5, 3.5)))
    assert time.perf_counter() - start < 120
    from bids_mrisr.sr.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "ckpt")
    metrics = evaluate_volume(ckpt.model, ckpt.config, vol, factor=3.0, axis=2)
    assert metrics["sampling_steps"] == 1
    assert metrics["gain_db"] > 1.0, metrics  # a clear margin over cubic
    assert metrics["ssim_model"] > metrics["ssim_cubic"]


def test_regression_loss_is_zero_for_a_perfect_predictor() -> None:
    class Oracle(nn.Module):
        def forward(self, x_t, cond, t):
            return cond[:, :1] * 0 + 0.5

    cond = torch.rand(2, 3, 8, 8)
    loss, stats = mean_regression_loss(Oracle(), cond, torch.full((2, 1, 8, 8), 0.5))
    assert float(loss) == 0.0 and stats["mse_over_cubic"] == 0.0


class _RowDiff(nn.Module):
    """Stand-in mean regressor: the centre slice's difference along H (rows).

    It answers only where the image varies along the rows, so it shows which in-plane direction
    the engine put the thick axis on; it also records the timestep and noisy-input it got."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, float]] = []

    def route(self, cond):
        return None

    def forward(self, x_t, cond, t, gates=None, active_experts=None):
        self.seen.append((float(t.float().mean()), float(x_t.abs().max())))
        centre = cond[:, cond.shape[1] // 2 : cond.shape[1] // 2 + 1]
        return centre - torch.roll(centre, 1, dims=2)


def _config() -> ModelConfig:
    return dataclasses.replace(ModelConfig.tiny_student(), context_slices=1,
                               prediction_type="mean", residual_scale=1.0)


def test_engine_runs_a_mean_model_once_with_the_thick_axis_along_rows() -> None:
    coord = np.sin(np.arange(20) / 2.0).astype(np.float32)
    for thick in range(3):
        shape = [1, 1, 1]
        shape[thick] = -1
        vol = np.broadcast_to(coord.reshape(shape), (20, 20, 20)).copy()
        model = _RowDiff()
        res = run_loaded(vol, model, _config(),
                         SROptions(steps=8, num_samples=3, blurred_axes=(thick,),
                                   flip_views=1))  # a roll is not flip-symmetric
        assert res.info["Sampler"] == "direct posterior-mean regression"
        assert res.info["SamplingSteps"] == 1 and res.info["NumSamples"] == 1
        assert res.uncertainty is None
        assert len(res.info["Planes"]) == 2  # the plane across the thick axis is not used
        assert all(t == 999.0 and x == 0.0 for t, x in model.seen)
        # Every used plane saw the variation along its rows: the output moved by the
        # difference along the thick axis, the same in both planes.
        expected = vol + (vol - np.roll(vol, 1, axis=thick))
        np.testing.assert_allclose(res.image, expected, atol=1e-5)


def test_isotropic_input_uses_every_plane() -> None:
    vol = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    res = run_loaded(vol, _RowDiff(), _config(), SROptions(blurred_axes=None))
    assert len(res.info["Planes"]) == 3 and res.info["RestoredAxes"] is None


def test_input_at_the_target_resolution_is_returned_unchanged() -> None:
    vol = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    model = _RowDiff()
    res = run_loaded(vol, model, _config(), SROptions(blurred_axes=()))
    np.testing.assert_array_equal(res.image, vol)
    assert model.seen == [] and res.info["RestoredAxes"] == []
    assert "already" in res.info["Restored"]


def test_isotropic_low_resolution_input_restores_each_axis_in_turn() -> None:
    """2 mm isotropic -> 1 mm: one pass per axis, each with that axis along the rows."""
    vol = (0.05 * np.random.default_rng(0).random((12, 12, 12))).astype(np.float32)
    res = run_loaded(vol, _RowDiff(), _config(), SROptions(blurred_axes=(0, 1, 2)))
    assert [p["Axis"] for p in res.info["Passes"]] == [0, 1, 2]
    assert all(len(p["Planes"]) == 2 for p in res.info["Passes"])
    expected = vol
    for axis in (0, 1, 2):  # the stand-in adds the difference along each axis in turn
        expected = expected + (expected - np.roll(expected, 1, axis=axis))
    np.testing.assert_allclose(res.image, expected, atol=1e-4)


def test_axes_to_restore_from_voxel_sizes() -> None:
    assert blurred_axes((1.0, 1.0, 3.0), 1.0) == (2,)
    assert blurred_axes((4.0, 0.9, 0.9), 0.9) == (0,)
    assert blurred_axes((1.0, 1.0, 1.2), 1.0) == ()  # mildly anisotropic: nothing to restore
    assert blurred_axes((2.0, 2.0, 2.0), 1.0) == (0, 1, 2)
    assert blurred_axes((2.0, 3.0, 1.0), 1.0) == (1, 0)  # coarsest first
    assert anisotropy((1.0, 1.0, 3.0)) == 3.0


def test_mean_model_builds_and_predicts_any_size() -> None:
    model = build_model(_config()).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 20, 28), torch.rand(1, 3, 20, 28),
                    torch.full((1,), 999.0))
    assert out.shape == (1, 1, 20, 28)
