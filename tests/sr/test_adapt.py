"""Per-scan self-supervised adaptation (--adapt): pairs, loss, regulariser, skip, determinism."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from bids_mrisr.sr.acquisition_input import PassAcquisition
from bids_mrisr.sr.adapt import AdaptOptions, adapt_model, adaptation_sampler
from bids_mrisr.sr.inference import run_loaded
from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.options import SROptions
from bids_mrisr.sr.refinement import maybe_adapt
from tests.sr.test_regression import _sharp_phantom

THICK_Z = PassAcquisition(axis=2, factor=3.0)
"""A 3x thick axis 2, with nothing told of its width or profile."""


def _student():
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    return build_model(config).eval()


def _anisotropic_scan(factor: int = 3, axis: int = 2) -> np.ndarray:
    """A sharp phantom seen through thick slices along ``axis`` (cubic back onto the grid)."""
    from bids_mrisr.sr.degrade import Degradation
    from bids_mrisr.sr.pairs import simulate_cubic

    return simulate_cubic(_sharp_phantom((40, 40, 40)), Degradation(axis=axis, factor=factor),
                          np.random.default_rng(0))


def test_pairs_degrade_the_in_plane_axes_with_the_scans_factor() -> None:
    scan = _anisotropic_scan()
    sampler = adaptation_sampler(scan, thick_axis=2, factor=3.0, context_slices=1,
                                 residual_scale=1.0, crop=32, seed=0)
    axes = sorted(params.axis for _, _, params in sampler.pool)
    assert axes == [0, 1]  # both in-plane axes, never the thick one
    for hr, cubic, params in sampler.pool:
        assert params.factor == 3.0 and params.profile == "gaussian"
        assert hr is scan  # the target is the scan itself
        # The degraded axis lost high-frequency energy, the other in-plane axis did not.
        def energy(v, a):
            return float((np.diff(v, axis=a) ** 2).mean())

        other = 1 - params.axis
        lost = energy(cubic, params.axis) / energy(scan, params.axis)
        kept = energy(cubic, other) / energy(scan, other)
        assert lost < 0.5 and kept > lost + 0.15, (lost, kept)


def test_adaptation_lowers_the_loss_and_full_regulariser_keeps_the_weights() -> None:
    scan = _anisotropic_scan()
    model = _student()
    adapted, info = adapt_model(model, scan, THICK_Z, AdaptOptions(steps=60, crop=32, lr=3e-3,
                                                                  keep_pretrained=0.0))
    assert info["LossAfter"] < info["LossBefore"]
    # The sidecar says what was simulated, and why.
    assert info["SliceProfile"].split()[0] in ("gaussian", "box")
    assert set(info["ProfileMisfit"]) == {"gaussian", "box"} and info["NoiseSigma"] >= 0
    told_box = dataclasses.replace(THICK_Z, profile="box", profile_source="given")
    given = adapt_model(model, scan, told_box, AdaptOptions(steps=2, crop=32,
                                                            match_noise=False))[1]
    assert given["SliceProfile"] == "box (given)" and given["NoiseSigma"] == 0.0
    frozen, info = adapt_model(model, scan, THICK_Z, AdaptOptions(steps=10, crop=32,
                                                                 keep_pretrained=1.0))
    for p, q in zip(model.parameters(), frozen.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert info["LossAfter"] == info["LossBefore"]


def test_isotropic_input_skips_adaptation_with_a_log_line(caplog) -> None:
    model = _student()
    options = SROptions(adapt_steps=50, blurred_axes=(0, 1, 2), axis_factors=(2.0, 2.0, 2.0))
    with caplog.at_level(logging.INFO, logger="bids_mrisr"):
        same, info = maybe_adapt(model, np.zeros((8, 8, 8), np.float32), None, options, "abc",
                                 None)
    assert same is model and info["Status"].startswith("skipped")
    assert "adaptation skipped" in caplog.text


def test_same_seed_same_adapted_output() -> None:
    scan = _anisotropic_scan()
    outs = []
    for _ in range(2):
        adapted, _ = adapt_model(_student(), scan, THICK_Z, AdaptOptions(steps=15, crop=32))
        res = run_loaded(scan, adapted, adapted.config, SROptions(blurred_axes=(2,)))
        outs.append(res.image)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_mean_teacher_adapts_its_experts_and_keeps_its_router() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny_teacher(), prediction_type="mean",
                                 router_top_k=2)
    teacher = build_model(config).eval()
    scan = _anisotropic_scan()
    adapted, info = adapt_model(teacher, scan, THICK_Z, AdaptOptions(steps=40, crop=32, lr=3e-3,
                                                                    keep_pretrained=0.0))
    assert info["LossAfter"] < info["LossBefore"]
    for name, before in teacher.state_dict().items():
        after = adapted.state_dict()[name]
        if name.startswith(("encoder.", "router.")):
            torch.testing.assert_close(after, before, msg=name)
    changed = [not torch.equal(p, q) for p, q in zip(teacher.experts.parameters(),
                                                     adapted.experts.parameters(), strict=True)]
    assert any(changed)
    assert all(p.requires_grad for p in teacher.parameters())  # the original is untouched


def test_ready_made_pairs_replace_the_scans_own() -> None:
    """Benchmarks pass pairs built from the truth; adaptation must train and report on them."""
    from bids_mrisr.sr.degrade import Degradation
    from bids_mrisr.sr.objectives import mean_regression_loss
    from bids_mrisr.sr.pairs import PairSampler

    scan, truth = _anisotropic_scan(), _sharp_phantom((40, 40, 40))
    model = _student()

    def truth_sampler() -> PairSampler:
        return PairSampler([truth], model.config.context_slices, model.config.residual_scale,
                           crop=32, seed=3, remap_intensities=False,
                           pool=[(truth, scan, Degradation(axis=2, factor=3.0))])

    twin = truth_sampler()
    with torch.no_grad():
        expected = np.mean([float(mean_regression_loss(model, *twin.sample(8))[0])
                            for _ in range(4)])
    _, info = adapt_model(model, scan, THICK_Z, AdaptOptions(steps=3, crop=32),
                          pairs=truth_sampler())
    own = adapt_model(model, scan, THICK_Z, AdaptOptions(steps=3, crop=32))[1]
    assert abs(info["LossBefore"] - round(float(expected), 5)) < 1e-5
    assert abs(own["LossBefore"] - info["LossBefore"]) > 1e-4  # the scan's pairs differ


def test_adaptation_shares_training_pairs_and_loss_with_unchanged_numbers() -> None:
    """Adaptation and training draw pairs and score them through the same modules
    (``sr/pairs.py``, ``sr/objectives.py``), and the move out of ``sr/training/`` changed no
    number: the golden values were computed at the commit before the move (same seed)."""
    from bids_mrisr.sr import adapt, objectives, pairs
    from bids_mrisr.sr.training import distill_mean, regression

    assert adapt.PairSampler is pairs.PairSampler is regression.PairSampler
    assert adapt.mean_regression_loss is objectives.mean_regression_loss
    assert regression.regression_loss is objectives.regression_loss
    assert distill_mean.MEAN_LOSS is objectives.MEAN_LOSS

    sampler = adaptation_sampler(_anisotropic_scan(), 2, 3.0, 2, 10.0, 16, seed=5,
                                 profile="gaussian", noise_sigma=0.01)
    cond, x0 = sampler.sample(4)
    with torch.no_grad():
        loss, stats = objectives.mean_regression_loss(_student(), cond, x0)
    got = [float(cond.double().sum()), float(x0.double().sum()), float(x0.double().abs().sum()),
           float(loss), stats["mse_over_cubic"]]
    golden = [1012.657822501511, -44.2875050175935, 208.38017998076975, 0.3289622962474823,
              2.5283556819293853]
    np.testing.assert_allclose(got, golden, rtol=1e-5)
