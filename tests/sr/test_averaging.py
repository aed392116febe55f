"""Weight averaging of campaign snapshots (sr/training/averaging.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bids_mrisr.sr.checkpoint import CheckpointError, load_checkpoint, random_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.training.averaging import average_checkpoints


def test_average_is_the_weighted_mean_of_every_tensor(tmp_path: Path) -> None:
    cfg = ModelConfig.tiny_student()
    random_checkpoint(tmp_path / "a", cfg, seed=1)
    random_checkpoint(tmp_path / "b", cfg, seed=2)
    average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "mean", weights=[3, 1])
    a = load_checkpoint(tmp_path / "a").model.state_dict()
    b = load_checkpoint(tmp_path / "b").model.state_dict()
    mean = load_checkpoint(tmp_path / "mean")
    differing = 0
    for name, value in mean.model.state_dict().items():
        expected = 0.75 * a[name].double() + 0.25 * b[name].double()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
        differing += int(not torch.equal(a[name], b[name]))
    assert differing > 0, "the two seeds should give different weights"
    sources = mean.provenance["averaged_from"]
    assert [s["weight"] for s in sources] == [0.75, 0.25]
    assert sources[0]["sha256"] == load_checkpoint(tmp_path / "a").sha256


def test_average_refuses_mixed_architectures_and_single_sources(tmp_path: Path) -> None:
    random_checkpoint(tmp_path / "student", ModelConfig.tiny_student())
    random_checkpoint(tmp_path / "teacher", ModelConfig.tiny_teacher())
    with pytest.raises(CheckpointError, match="different architectures"):
        average_checkpoints([tmp_path / "student", tmp_path / "teacher"], tmp_path / "out")
    with pytest.raises(CheckpointError, match="at least two"):
        average_checkpoints([tmp_path / "student"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
