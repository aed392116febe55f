"""The regression trainer under torchrun: two CPU processes, gloo, DDP, one writer; resume."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bids_mrisr.sr.checkpoint import load_checkpoint
from bids_mrisr.sr.networks import ModelConfig
from bids_mrisr.sr.training.regression import (
    STATE_FILE,
    RegressionRecipe,
    train_mean_regressor,
)

SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys
    import numpy as np, torch
    from bids_mrisr.sr.networks import ModelConfig
    from bids_mrisr.sr.training import regression
    out = sys.argv[1]
    vol = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
    cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    seen = []
    original = regression._Crops.sampler
    def spy(self, worker=0):
        s = original(self, worker)
        seen.append(s.rng.integers(1 << 30))
        return s
    regression._Crops.sampler = spy
    sha = regression.train_mean_regressor(
        [vol], cfg, out, regression.RegressionRecipe(steps=6, batch_size=2, crop=16, threads=1))
    rank = os.environ["RANK"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"sha": sha, "world": os.environ["WORLD_SIZE"], "first_draw": int(seen[0])},
                  f)
""")


def test_two_cpu_processes_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == "2"
    assert ranks[0]["sha"] and ranks[1]["sha"] is None  # rank 0 alone writes
    assert ranks[0]["first_draw"] != ranks[1]["first_draw"]  # each rank draws its own crops
    ckpt = load_checkpoint(out)
    assert ckpt.provenance["processes"] == 2 and ckpt.provenance["device"] == "cpu"
    assert ckpt.sha256 == ranks[0]["sha"]


def test_resume_continues_from_the_saved_state(tmp_path: Path, monkeypatch) -> None:
    from bids_mrisr.sr.training import loop

    vol = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
    cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    out = tmp_path / "ckpt"
    calls = []
    real_step = loop.lr_at

    def interrupt(step, total, base, warmup):
        calls.append(step)
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed after 4 steps, with a state saved at step 2
        return real_step(step, total, base, warmup)

    monkeypatch.setattr(loop, "lr_at", interrupt)
    recipe = RegressionRecipe(steps=8, batch_size=2, crop=16, threads=1, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_mean_regressor([vol], cfg, out, recipe)
    assert (out / STATE_FILE).is_file() and not (out / "model.json").exists()
    monkeypatch.setattr(loop, "lr_at", real_step)
    train_mean_regressor([vol], cfg, out, recipe, resume=True)
    ckpt = load_checkpoint(out)
    assert ckpt.provenance["steps"] == 8
    assert not (out / STATE_FILE).exists()  # removed once the weights are written
