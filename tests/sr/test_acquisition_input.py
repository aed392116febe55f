"""Acquisition conditioning: the student is told the factor, profile and width it restores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bids_mrisr.sr.checkpoint import save_checkpoint
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.inference import run_loaded, run_model
from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.networks.config import ACQUISITION_FEATURES, acquisition_code
from bids_mrisr.sr.objectives import predict_mean
from bids_mrisr.sr.options import SROptions
from bids_mrisr.sr.pairs import PairSampler, simulate_cubic
from bids_mrisr.sr.training.regression import _warm_start
from tests.sr.test_regression import _sharp_phantom


def _config(features: int) -> ModelConfig:
    return dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                               acquisition_features=features)


def _conditioned_student(seed: int = 0) -> torch.nn.Module:
    """A conditioned student whose acquisition input matters (random, not zero, weights)."""
    torch.manual_seed(seed)
    model = build_model(_config(ACQUISITION_FEATURES)).eval()
    with torch.no_grad():
        model.unet.acquisition.weight.normal_(0, 1.0)
    return model


def test_checkpoints_written_before_the_field_stay_blind() -> None:
    old = ModelConfig.student_default().to_dict()
    del old["acquisition_features"]  # a model.json written before the field existed
    assert ModelConfig.from_dict(old).acquisition_features == 0
    with pytest.raises(ValueError, match="acquisition_features"):
        dataclasses.replace(ModelConfig.tiny_teacher(), acquisition_features=2)


def test_code_layout() -> None:
    assert acquisition_code(3.0) == [0.0, 0.0, 0.0]  # a typical scan, profile and width unknown
    assert acquisition_code(5.0, "box", 1.3) == pytest.approx([1.0, 1.0, 1.0])
    assert acquisition_code(2.0, "gaussian", 0.85) == pytest.approx([-0.5, -1.0, -0.5])
    with pytest.raises(ValueError):
        acquisition_code(3.0, "sinc")


def test_a_blind_checkpoint_starts_a_conditioned_network_unchanged(tmp_path) -> None:
    """Fine-tuning the blind student with the new input starts from exactly its function."""
    torch.manual_seed(1)
    blind = build_model(_config(0)).eval()
    save_checkpoint(blind, tmp_path / "blind")
    conditioned = build_model(_config(ACQUISITION_FEATURES))
    start = _warm_start(conditioned, conditioned.config, tmp_path / "blind")
    assert len(start["sha256"]) == 64
    conditioned.eval()
    cond = torch.randn(2, blind.config.in_condition_channels, 16, 16)
    code = torch.tensor([acquisition_code(2.0, "box", 1.2), acquisition_code(4.5, "gaussian")])
    with torch.no_grad():
        torch.testing.assert_close(predict_mean(conditioned, cond, code),
                                   predict_mean(blind, cond), rtol=0, atol=0)


def test_training_codes_match_the_engines_for_the_same_acquisition() -> None:
    """Each crop's code is what the engine says for that scan, or 'unknown' in its place."""
    vols = [_sharp_phantom((24, 24, 24))]
    sampler = PairSampler(vols, 1, 10.0, crop=16, seed=4, refresh_every=10**9, pool_size=1)
    seen = set()
    for _ in range(12):
        params = sampler.pool[0][2]
        _, _, code = sampler.sample_with_acquisition(1)
        factor, shape, width = code[0].tolist()
        assert factor == pytest.approx((params.factor - 3) / 2)
        assert shape in (0.0, 1.0 if params.profile == "box" else -1.0)
        assert width in (0.0, pytest.approx((params.thickness_ratio - 1) / 0.3))
        seen.add((shape != 0, width != 0))
        sampler.refresh()
    assert len(seen) >= 3  # known and unknown entries both occur


def test_the_engine_tells_the_network_the_profile_and_records_it() -> None:
    scan = simulate_cubic(_sharp_phantom((32, 32, 32)), Degradation(axis=2, factor=3.0),
                          np.random.default_rng(0))
    model = _conditioned_student()
    base = SROptions(blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0))
    box = run_loaded(scan, model, model.config, dataclasses.replace(base, slice_profile="box"))
    gauss = run_loaded(scan, model, model.config,
                       dataclasses.replace(base, slice_profile="gaussian"))
    assert np.abs(box.image - gauss.image).max() > 1e-3  # the code reaches the network
    assert box.info["AcquisitionInput"] == [
        {"Axis": 2, "Factor": 3.0, "SliceProfile": "box (given)", "SliceWidth": "unknown"}]
    iso = run_loaded(scan, model, model.config,
                     SROptions(blurred_axes=(0, 1), axis_factors=(2.0, 2.0, 1.0)))
    assert [p["SliceProfile"] for p in iso.info["AcquisitionInput"]] == ["unknown", "unknown"]


def test_run_model_reads_the_profile_from_the_scan_unless_given(tmp_path) -> None:
    hr = _sharp_phantom((48, 48, 48))
    scan = simulate_cubic(hr, Degradation(axis=2, factor=3.0, profile="box"),
                          np.random.default_rng(0))
    save_checkpoint(_conditioned_student(), tmp_path / "ck")
    options = SROptions(weights=tmp_path / "ck", device="cpu", blurred_axes=(2,),
                        axis_factors=(1.0, 1.0, 3.0))
    read = run_model(scan, options).info["AcquisitionInput"][0]["SliceProfile"]
    assert read.endswith("(estimated from the scan's spectrum)")
    given = run_model(scan, dataclasses.replace(options, slice_profile="gaussian"))
    assert given.info["AcquisitionInput"][0]["SliceProfile"] == "gaussian (given)"
    from_header = run_model(scan, dataclasses.replace(
        options, slice_profile="box", slice_profile_source="from MRAcquisitionType 2D"))
    assert (from_header.info["AcquisitionInput"][0]["SliceProfile"]
            == "box (from MRAcquisitionType 2D)")


def test_only_a_clear_box_reading_is_told() -> None:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate

    def told(profile: str, misfit: dict[str, float]) -> str:
        return AcquisitionEstimate(profile, 0.01, misfit).told_profile()

    assert told("box", {"gaussian": 0.05, "box": 0.02}) == "box"
    assert told("box", {"gaussian": 0.0201, "box": 0.02}) == "unknown"  # a near-tie: nothing
    assert told("gaussian", {"gaussian": 0.01, "box": 0.03}) == "unknown"  # never beat unknown
    assert told("gaussian", {}) == "unknown"  # no head to read


def test_each_pass_gets_one_immutable_value_from_header_flags_and_scan() -> None:
    from bids_mrisr.sr.acquisition import AcquisitionEstimate
    from bids_mrisr.sr.acquisition_input import (
        FROM_SPECTRUM,
        PassAcquisition,
        pass_acquisitions,
        told_acquisitions,
    )

    (unknown,) = told_acquisitions(SROptions())  # no geometry: one pass, nothing known
    assert (unknown.axis, unknown.factor, unknown.profile) == (None, None, "unknown")
    assert unknown.code().tolist() == [[0.0] * ACQUISITION_FEATURES]
    iso = told_acquisitions(SROptions(blurred_axes=(0, 2), axis_factors=(3.0, 1.0, 2.0),
                                      slice_profile="box"))
    assert [(v.axis, v.factor, v.profile) for v in iso] == [(0, 3.0, "unknown"),
                                                            (2, 2.0, "unknown")]
    (told,) = told_acquisitions(SROptions(blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0),
                                          slice_profile="box", slice_thickness_ratio=1.2,
                                          slice_profile_source="from MRAcquisitionType 2D"))
    assert told == PassAcquisition(2, 3.0, 1.2, "box", "from MRAcquisitionType 2D")
    assert told.code().tolist() == [pytest.approx(acquisition_code(3.0, "box", 1.2))]
    with pytest.raises(dataclasses.FrozenInstanceError):
        told.profile = "gaussian"  # type: ignore[misc]

    clear = AcquisitionEstimate("box", 0.01, {"gaussian": 0.05, "box": 0.02})
    tie = AcquisitionEstimate("box", 0.01, {"gaussian": 0.0201, "box": 0.02})
    bare = PassAcquisition(2, 3.0)
    assert (bare.with_reading(clear).profile, bare.with_reading(clear).profile_source) == (
        "box", FROM_SPECTRUM)
    near = bare.with_reading(tie)
    assert near.profile == "unknown" and near.simulated_profile == "box"
    assert "spectrum reads box" in near.describe()["SliceProfile"]
    given = PassAcquisition(2, 3.0, None, "gaussian", "given").with_reading(clear)
    assert given.describe()["SliceProfile"] == "gaussian (given)"

    scan = simulate_cubic(_sharp_phantom((32, 32, 32)), Degradation(axis=2, factor=3.0),
                          np.random.default_rng(0))
    options = SROptions(blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0))
    assert pass_acquisitions(_config(0), scan, options)[0].estimate is None  # blind: no reading
    assert pass_acquisitions(_config(ACQUISITION_FEATURES), scan, options)[0].estimate is not None
    assert pass_acquisitions(_config(0), scan, dataclasses.replace(options, adapt_steps=2),
                             )[0].estimate is not None  # adaptation needs the noise


def test_network_adaptation_and_consistency_record_the_same_acquisition(tmp_path) -> None:
    """One value per pass reaches every step: the sidecar's three records agree."""
    scan = simulate_cubic(_sharp_phantom((48, 48, 48)),
                          Degradation(axis=2, factor=3.0, profile="box"),
                          np.random.default_rng(0))
    save_checkpoint(_conditioned_student(), tmp_path / "ck")
    info = run_model(scan, SROptions(weights=tmp_path / "ck", device="cpu", blurred_axes=(2,),
                                     axis_factors=(1.0, 1.0, 3.0), flip_views=1,
                                     adapt_steps=2, slice_thickness_ratio=1.1)).info
    told = info["AcquisitionInput"][0]
    assert told["SliceProfile"] == "box (estimated from the scan's spectrum)"
    assert info["Adaptation"]["SliceProfile"] == told["SliceProfile"]
    assert info["InputConsistency"]["SliceProfile"] == "box"
    assert info["Adaptation"]["NoiseSigma"] == info["InputConsistency"]["NoiseSigma"]
    assert told["SliceWidth"] == info["InputConsistency"]["SliceWidth"] == "1.1 x slice spacing"
