"""Checkpoint directories: round trip, integrity checks and readable failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bids_mrisr.sr.checkpoint import (
    CheckpointError,
    load_checkpoint,
    random_checkpoint,
    save_checkpoint,
)
from bids_mrisr.sr.engine import SRError
from bids_mrisr.sr.networks import ModelConfig, build_model


def _inputs(cfg: ModelConfig, H: int = 20, W: int = 28):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(1, 1, H, W, generator=g),
            torch.randn(1, cfg.in_condition_channels, H, W, generator=g),
            torch.tensor([250.0]))


@pytest.mark.parametrize("factory", [ModelConfig.tiny_teacher, ModelConfig.tiny_student])
def test_round_trip_identical_outputs(tmp_path: Path, factory) -> None:
    cfg = factory()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    digest = save_checkpoint(model, tmp_path / "ckpt", provenance={"epochs": 3})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.sha256 == digest and len(digest) == 64
    assert loaded.config == cfg
    assert loaded.provenance == {"epochs": 3}
    assert not loaded.model.training
    manifest = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert manifest["format"] == "bids_mrisr-checkpoint" and manifest["format_version"] == 1
    assert manifest["weights_file"] == "model.safetensors" and manifest["sha256"] == digest
    x, cond, t = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, cond, t), model(x, cond, t), rtol=0, atol=0)
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_random_checkpoint_is_reproducible(tmp_path: Path) -> None:
    cfg = ModelConfig.tiny_student()
    a = random_checkpoint(tmp_path / "a", cfg, seed=5)
    b = random_checkpoint(tmp_path / "b", cfg, seed=5)
    c = random_checkpoint(tmp_path / "c", cfg, seed=6)
    assert a == b != c
    assert load_checkpoint(tmp_path / "a").provenance["trained"] is False


def test_tampered_weights(tmp_path: Path) -> None:
    random_checkpoint(tmp_path, ModelConfig.tiny_student())
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256.*corrupt or modified"):
        load_checkpoint(tmp_path)


def test_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="model.json is missing"):
        load_checkpoint(tmp_path)
    random_checkpoint(tmp_path, ModelConfig.tiny_student())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file model.safetensors is missing"):
        load_checkpoint(tmp_path)
    assert issubclass(CheckpointError, SRError)


def test_bad_manifest(tmp_path: Path) -> None:
    random_checkpoint(tmp_path, ModelConfig.tiny_student())
    manifest = tmp_path / "model.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(tmp_path)
    manifest.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a bids_mrisr-checkpoint"):
        load_checkpoint(tmp_path)
    d = json.loads(good)
    d["config"]["kind"] = "oracle"
    manifest.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(tmp_path)


def test_config_mismatched_with_weights(tmp_path: Path) -> None:
    random_checkpoint(tmp_path, ModelConfig.tiny_student())
    manifest = tmp_path / "model.json"
    d = json.loads(manifest.read_text())
    d["config"]["base_width"] = 8  # sha256 still matches: the weights file is untouched
    manifest.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="mismatched checkpoint") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    d["config"] = ModelConfig.tiny_teacher().to_dict()
    manifest.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="mismatched checkpoint"):
        load_checkpoint(tmp_path)


def test_noise_schedule_is_saved_and_rebuilt_from_the_manifest(tmp_path) -> None:
    import dataclasses
    import json

    from bids_mrisr.sr.checkpoint import load_checkpoint, random_checkpoint
    from bids_mrisr.sr.networks.config import ModelConfig

    config = dataclasses.replace(ModelConfig.tiny_student(), schedule_steps=500, schedule_s=0.01)
    random_checkpoint(tmp_path / "ck", config)
    saved = json.loads((tmp_path / "ck" / "model.json").read_text())["config"]
    assert saved["schedule_steps"] == 500 and saved["schedule_s"] == 0.01
    schedule = load_checkpoint(tmp_path / "ck").config.noise_schedule()
    assert (schedule.num_train_steps, schedule.s) == (500, 0.01)
