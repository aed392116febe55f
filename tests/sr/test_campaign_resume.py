"""A training campaign spread over sittings: a stopped and resumed run equals an uninterrupted
one at the same step (weights, optimiser, EMA, schedule and crop sampler all carried)."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_mrisr.sr.checkpoint import load_checkpoint
from bids_mrisr.sr.networks import ModelConfig
from bids_mrisr.sr.pairs import PairSampler
from bids_mrisr.sr.training import regression
from bids_mrisr.sr.training.regression import STATE_FILE, RegressionRecipe, train_mean_regressor

STEPS = 8


def _volumes() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((20, 22, 24)).astype(np.float32) for _ in range(3)]


def _config() -> ModelConfig:
    return dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                               acquisition_features=3)


def _recipe(**kw) -> RegressionRecipe:
    return RegressionRecipe(steps=STEPS, batch_size=2, crop=16, threads=1, save_every=100,
                            **kw)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(directory).model.state_dict()


@pytest.fixture(autouse=True)
def _frequent_refreshes(monkeypatch) -> None:
    """Refresh the degradation pool every 3 crops, so that a resumed sampler must rebuild a
    pool that has changed since the run began."""
    monkeypatch.setattr(regression, "REFRESH_EVERY", 3)


def test_a_run_stopped_by_a_signal_and_resumed_equals_an_uninterrupted_one(tmp_path: Path):
    whole = tmp_path / "whole"
    train_mean_regressor(_volumes(), _config(), whole, _recipe())

    parted = tmp_path / "parted"

    def signal_at_step_3(step: int, _total: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled between two steps: state saved

    with pytest.raises(KeyboardInterrupt):
        train_mean_regressor(_volumes(), _config(), parted, _recipe(), progress=signal_at_step_3)
    assert torch.load(parted / STATE_FILE, weights_only=True)["step"] == 3
    assert not (parted / "model.json").exists()
    train_mean_regressor(_volumes(), _config(), parted, _recipe(), resume=True)

    a, b = _weights(whole), _weights(parted)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    prov = load_checkpoint(parted).provenance
    assert [(s["from_step"], s["to_step"]) for s in prov["compute"]["sittings"]] == [(0, 3),
                                                                                      (3, 8)]
    assert prov["compute"]["steps"] == STEPS and prov["finished"] is True


def test_resuming_without_the_sampler_state_would_differ(tmp_path: Path):
    """The check above can fail: a resumed run with a fresh sampler (what resuming did before
    the sampler's state was saved) ends elsewhere."""
    whole = tmp_path / "whole"
    train_mean_regressor(_volumes(), _config(), whole, _recipe())
    parted = tmp_path / "parted"

    def interrupt_at_step_3(step: int, _total: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_mean_regressor(_volumes(), _config(), parted, _recipe(),
                             progress=interrupt_at_step_3)
    state = torch.load(parted / STATE_FILE, weights_only=True)
    state["sampler"] = None
    torch.save(state, parted / STATE_FILE)
    train_mean_regressor(_volumes(), _config(), parted, _recipe(), resume=True)
    a, b = _weights(whole), _weights(parted)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_sitting_that_ends_early_keeps_its_state_and_writes_a_snapshot(tmp_path: Path):
    out = tmp_path / "campaign"
    train_mean_regressor(_volumes(), _config(), out, _recipe(stop_minutes=0.0))
    snapshot = load_checkpoint(out).provenance
    assert snapshot["finished"] is False and snapshot["steps"] == 0
    assert (out / STATE_FILE).is_file()
    train_mean_regressor(_volumes(), _config(), out, _recipe(), resume=True)
    final = load_checkpoint(out).provenance
    assert final["finished"] is True and final["steps"] == STEPS
    assert len(final["compute"]["sittings"]) == 2
    assert not (out / STATE_FILE).exists()


def test_a_sitting_stopped_at_a_step_snapshots_that_step_and_resumes_exactly(tmp_path: Path):
    """``stop_step``: the snapshot is the EMA at exactly that step (a replicate compared at the
    step another run shipped), and the resumed run still ends where an uninterrupted one does."""
    whole = tmp_path / "whole"
    train_mean_regressor(_volumes(), _config(), whole, _recipe())
    parted = tmp_path / "parted"
    train_mean_regressor(_volumes(), _config(), parted, _recipe(stop_step=5))
    snapshot = load_checkpoint(parted).provenance
    assert snapshot["steps"] == 5 and snapshot["finished"] is False
    assert torch.load(parted / STATE_FILE, weights_only=True)["step"] == 5
    train_mean_regressor(_volumes(), _config(), parted, _recipe(stop_step=5), resume=True)
    assert load_checkpoint(parted).provenance["steps"] == 5  # already there: ends at once
    train_mean_regressor(_volumes(), _config(), parted, _recipe(), resume=True)
    a, b = _weights(whole), _weights(parted)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_checkpoint(parted).provenance["finished"] is True


def test_resuming_another_network_is_refused(tmp_path: Path):
    out = tmp_path / "campaign"
    train_mean_regressor(_volumes(), _config(), out, _recipe(stop_minutes=0.0))
    wider = dataclasses.replace(_config(), base_width=8)
    with pytest.raises(ValueError, match="another network"):
        train_mean_regressor(_volumes(), wider, out, _recipe(), resume=True)


def test_a_sampler_restored_from_its_state_draws_the_same_crops():
    first = PairSampler(_volumes(), 2, 4.0, crop=16, seed=1, refresh_every=3)
    for _ in range(4):
        first.sample_with_acquisition(2)
    state = first.state_dict()
    second = PairSampler(_volumes(), 2, 4.0, crop=16, seed=99, refresh_every=3)
    second.load_state_dict(state)
    for _ in range(4):
        for x, y in zip(first.sample_with_acquisition(2), second.sample_with_acquisition(2),
                        strict=True):
            assert torch.equal(x, y)


def test_resuming_with_other_recipe_options_is_refused_and_an_older_state_takes_them(
        tmp_path: Path):
    out = tmp_path / "campaign"
    record = {"lr": 2e-3, "profiles": ["gaussian", "box"]}
    train_mean_regressor(_volumes(), _config(), out, _recipe(stop_minutes=0.0), record=record)
    assert torch.load(out / STATE_FILE, weights_only=True)["record"] == record
    with pytest.raises(ValueError, match=r"other recipe options \(profiles \['gaussian', "
                                         r"'box'\] saved, \['box'\] given\)"):
        train_mean_regressor(_volumes(), _config(), out, _recipe(), resume=True,
                             record={"lr": 2e-3, "profiles": ["box"]})
    # a state saved before states kept their recipe options (the campaign's) resumes
    state = torch.load(out / STATE_FILE, weights_only=True)
    del state["record"]
    torch.save(state, out / STATE_FILE)
    train_mean_regressor(_volumes(), _config(), out, _recipe(), resume=True, record=record)
    assert load_checkpoint(out).provenance["finished"] is True
