"""The one-shot GPU script, run on the CPU: teacher, distilled student, summary; its import
closure free of nibabel, nipype, pybids and SimpleITK (the GPU machine has none of them); and
the distillation loss really pulls the student toward the teacher."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bids_mrisr.sr.checkpoint import load_checkpoint
from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.training.distill import FeatureProjector
from bids_mrisr.sr.training.distill_mean import mean_distill_loss
from bids_mrisr.sr.training.oneshot import load_packed

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("nibabel", "nipype", "bids", "SimpleITK", "bids_mrisr.config", "bids_mrisr.bids")
WRAPPER = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
    "sys.argv = ['oneshot', *sys.argv[1:]]\n"
    "runpy.run_module('bids_mrisr.sr.training.oneshot', run_name='__main__')\n"
)


def _head(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid 'head' with smooth texture, normalised like the app's volumes."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    texture = 0.6 + 0.3 * np.sin(6 * grid[0] + rng.uniform(0, 6)) * np.cos(5 * grid[1])
    noise = rng.normal(0, 0.02, shape)
    return (inside * texture + np.abs(noise)).astype(np.float16)


def _pack(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez_compressed(path, train_0=_head(rng, (40, 44, 36)), train_1=_head(rng, (36, 40, 40)),
                        train_names=np.array(["a", "b"]), val_0=_head(rng, (36, 40, 36)),
                        val_names=np.array(["v"]))


def test_oneshot_runs_without_the_bids_stack(tmp_path: Path) -> None:
    packed, out = tmp_path / "volumes.npz", tmp_path / "out"
    _pack(packed)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, "--volumes", str(packed), "--out", str(out),
         "--preset", "tiny", "--device", "cpu", "--crop", "32", "--batch-size", "2",
         "--teacher-steps", "3", "--distill-steps", "3", "--plain-steps", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    teacher = load_checkpoint(out / "teacher")
    student = load_checkpoint(out / "student")
    plain = load_checkpoint(out / "student_plain")
    assert teacher.config.kind == "teacher" and teacher.config.router_top_k == 2
    assert teacher.config.prediction_type == student.config.prediction_type == "mean"
    assert student.config.acquisition_features == 3
    assert student.provenance["distilled_from"] == teacher.sha256
    assert student.provenance["teacher_weight"] > 0 and student.provenance["steps"] == 3
    assert plain.provenance["distilled_from"] is None and plain.config == student.config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gate_check"]["crops"] > 0
    assert summary["phases"]["student"]["distilled_from"] == teacher.sha256
    assert "gain_db" in summary["phases"]["student"]["metrics"]
    # a CPU-budget distillation starts from a trained student and keeps its architecture
    again = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, "--volumes", str(packed), "--out", str(again),
         "--device", "cpu", "--crop", "32", "--batch-size", "2", "--teacher",
         str(out / "teacher"), "--init-student", str(out / "student_plain"),
         "--distill-steps", "1", "--lr", "1e-9", "--no-validation"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    started = load_checkpoint(again / "student")
    assert started.config == plain.config  # not the default preset's width
    assert started.provenance["init_weights"]["sha256"] == plain.sha256
    assert started.provenance["distilled_from"] == teacher.sha256
    for name, tensor in plain.model.state_dict().items():
        assert torch.allclose(started.model.state_dict()[name], tensor, atol=1e-5), name


def test_packed_test_subjects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, train_0=np.zeros((4, 4, 4), np.float16),
                        train_names=np.array(["sub-forrest01/anat/sub-forrest01_T1w.nii.gz"]))
    try:
        load_packed(path)
    except ValueError as exc:
        assert "forrest01" in str(exc)
    else:
        raise AssertionError("a pack holding a test subject was accepted")


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    t_cfg = dataclasses.replace(ModelConfig.tiny_teacher(), prediction_type="mean",
                                acquisition_features=3, router_top_k=2)
    s_cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                                acquisition_features=3)
    teacher = build_model(t_cfg).eval()
    with torch.no_grad():  # a teacher whose prediction is far from zero and from x0
        for expert in teacher.experts:
            expert.unet.out_conv.bias.fill_(1.5)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, build_model(s_cfg)


def _distance_after(weight: float, steps: int = 25) -> tuple[float, float]:
    """(before, after) L1 distance of the student to the teacher, training on one batch."""
    teacher, student = _pair()
    gen = torch.Generator().manual_seed(1)
    cond = torch.rand(4, 5, 32, 32, generator=gen)
    x0 = torch.randn(4, 1, 32, 32, generator=gen) * 0.1
    code = torch.zeros(4, 3)
    projector = FeatureProjector(student, teacher, size=32)
    opt = torch.optim.Adam([*student.parameters(), *projector.parameters()], lr=3e-3)

    def distance() -> float:
        with torch.no_grad():
            _, stats = mean_distill_loss(student, cond, x0, code, teacher=teacher)
        return stats["l1_teacher"]

    before = distance()
    for _ in range(steps):
        loss, _ = mean_distill_loss(student, cond, x0, code, teacher=teacher,
                                    projector=projector, teacher_weight=weight,
                                    feature_weight=0.1 if weight else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, distance()


def test_distillation_pulls_the_student_toward_the_teacher() -> None:
    before, guided = _distance_after(4.0)
    _, unguided = _distance_after(0.0)
    assert guided < 0.6 * before  # the teacher term moves the student onto the teacher
    assert guided < 0.6 * unguided  # and it is that term: x0 alone leaves it far away


def test_identity_projection_starts_an_upcycled_students_guidance_near_zero() -> None:
    from bids_mrisr.sr.training.regression import _upcycle

    torch.manual_seed(0)
    s_cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                                acquisition_features=3)
    student = build_model(s_cfg).eval()
    teacher = build_model(ModelConfig.upcycled_teacher(s_cfg)).eval()

    class Loaded:  # what load_checkpoint returns, as far as upcycling reads it
        config, model, sha256, provenance = s_cfg, student, "0" * 64, {}

    _upcycle(teacher, teacher.config, [Loaded()], [Path("student")])
    gen = torch.Generator().manual_seed(1)
    cond = torch.rand(2, 5, 32, 32, generator=gen)
    x0, code = torch.zeros(2, 1, 32, 32), torch.zeros(2, 3)

    def guidance(identity: bool) -> float:
        projector = FeatureProjector(student, teacher, size=32, identity=identity)
        with torch.no_grad():
            _, stats = mean_distill_loss(student, cond, x0, code, teacher=teacher,
                                         projector=projector, feature_weight=1.0)
        return stats["feature"]

    # every expert computes the student, so the gate-mixed features are the student's own
    assert guidance(identity=True) < 1e-8
    assert guidance(identity=False) > 1e-3
