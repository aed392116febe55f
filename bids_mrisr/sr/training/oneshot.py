"""One GPU call: train the MoE mean teacher, distil the student, write both under ``--out``.

A lent GPU machine has torch but neither nibabel, nipype nor pybids, runs one command for at
most ten minutes and returns only what that command wrote. So the volumes arrive preprocessed
(``scripts/gpu/pack.py``), nothing here imports the BIDS side of the app, and each checkpoint is
written as soon as its phase ends: a call cut short still returns the teacher.

    PYTHONPATH=. python -m bids_mrisr.sr.training.oneshot --volumes scripts/gpu/volumes.npz \
        --out "$OUT" --teacher-minutes 4 --distill-minutes 3

Writes OUT/teacher (MoE mean teacher: experts of base width 32, top-2 of 3, told the
acquisition), OUT/student (base width 32, told the acquisition, distilled), optionally
OUT/student_plain (the same student without a teacher, ``--plain-minutes``) and
OUT/summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bids_mrisr.oneshot")

TEST_SET = ("forrest01", "adi01")
"""The benchmark's test subjects: a pack that holds them is refused."""
WIDTH = 32
LOG_SECONDS = 30.0


def load_packed(path: Path) -> tuple[list[np.ndarray], list[str], list[np.ndarray], list[str]]:
    """Training and validation volumes (float32) and their names from a ``pack.py`` npz."""
    with np.load(path, allow_pickle=False) as z:
        out: list[Any] = []
        for prefix in ("train", "val"):
            names = [str(n) for n in z[f"{prefix}_names"]] if f"{prefix}_names" in z else []
            out += [[np.asarray(z[f"{prefix}_{i}"], dtype=np.float32)
                     for i in range(len(names))], names]
    leaked = [n for n in out[1] + out[3] if any(t in n for t in TEST_SET)]
    if leaked:
        raise ValueError(f"{path}: holds test-set volumes {leaked}; repack without them")
    if not out[0]:
        raise ValueError(f"{path}: no training volumes")
    return tuple(out)  # type: ignore[return-value]


def configs(preset: str, width: int = WIDTH) -> tuple[Any, Any]:
    """(teacher, student) configs: mean regressors told the acquisition, top-2 of 3 experts."""
    from bids_mrisr.sr.networks.config import ACQUISITION_FEATURES, ModelConfig

    tiny = preset == "tiny"
    teacher = ModelConfig.tiny_teacher() if tiny else ModelConfig.teacher_default()
    student = ModelConfig.tiny_student() if tiny else ModelConfig.student_default()
    common = {"prediction_type": "mean", "acquisition_features": ACQUISITION_FEATURES}
    if not tiny:
        common["base_width"] = width
    return (dataclasses.replace(teacher, router_top_k=2, **common),
            dataclasses.replace(student, **common))


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress lines at most every :data:`LOG_SECONDS` (the call's only sign of life)."""
    started = time.monotonic()
    last = [started]

    def report(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= LOG_SECONDS:
            last[0] = now
            log.info("%s: step %d of ~%d, %.1f min", label, step, total, (now - started) / 60)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bids_mrisr.sr.training.oneshot",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=Path, required=True, help="npz from scripts/gpu/pack.py")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--teacher-minutes", type=float, default=4.0,
                   help="0: no teacher (and no distilled student)")
    p.add_argument("--distill-minutes", type=float, default=3.0)
    p.add_argument("--plain-minutes", type=float, default=0.0,
                   help="also train the same student without the teacher (OUT/student_plain)")
    p.add_argument("--teacher-steps", type=int, default=None, help="step cap (tests)")
    p.add_argument("--distill-steps", type=int, default=None, help="step cap (tests)")
    p.add_argument("--plain-steps", type=int, default=None, help="step cap (tests)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="distil this MoE mean teacher instead of training one")
    p.add_argument("--init-student", type=Path, default=None,
                   help="start the student phases from this student checkpoint (its "
                        "architecture replaces the preset's): a CPU-budget distillation "
                        "fine-tunes the shipped student")
    p.add_argument("--teacher-weight", "--lambda", type=float, default=1.0, dest="lam",
                   help="lambda: L1 to the teacher's prediction")
    p.add_argument("--feature-weight", "--mu", type=float, default=0.1, dest="mu",
                   help="mu: feature guidance")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", choices=("default", "tiny"), default="default")
    p.add_argument("--width", type=int, default=WIDTH, help="base width of teacher experts "
                   "and student (default preset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="crop-making processes (default: CPU cores - 2 on a GPU, max 12; 0 on "
                        "a CPU)")
    p.add_argument("--no-validation", action="store_true",
                   help="skip the held-out metrics (tests)")
    return p


def _budget(steps: int | None, minutes: float) -> tuple[int | None, float | None]:
    """(steps, minutes) for a recipe: under a time budget the clock ends the run."""
    from bids_mrisr.sr.training.distill_mean import STEP_CEILING

    if steps is not None:
        return steps, minutes or None
    return STEP_CEILING, minutes


def _manifest(directory: Path) -> dict[str, Any]:
    meta = json.loads((directory / "model.json").read_text())
    prov = meta.get("provenance", {})
    return {"sha256": meta.get("sha256"), "steps": prov.get("steps"),
            "minutes": prov.get("minutes"), "wall_minutes": prov.get("wall_minutes"),
            "metrics": {k: v for k, v in (prov.get("metrics") or {}).items()
                        if k != "per_volume"} or None,
            "gates": prov.get("gates"), "distilled_from": prov.get("distilled_from"),
            "base_width": meta["config"]["base_width"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The phases, each checkpoint written when its phase ends; returns the summary."""
    import torch

    from bids_mrisr.sr.device import resolve_device
    from bids_mrisr.sr.training.distill_mean import MeanDistillRecipe, distill_mean_student

    started = time.monotonic()
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes
    workers = args.workers
    if workers is None:
        workers = min(12, max(0, (os.cpu_count() or 2) - 2)) if dev.type == "cuda" else 0
    train, train_names, val, val_names = load_packed(args.volumes)
    val_used = None if args.no_validation else (val or None)
    log.info("%d training volume(s) (%s); validation: %s; device %s%s; %d worker(s)",
             len(train), ", ".join(train_names), ", ".join(val_names) or "none", dev,
             f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "", workers)
    teacher_cfg, student_cfg = configs(args.preset, args.width)
    if args.init_student is not None:
        from bids_mrisr.sr.checkpoint import load_checkpoint

        student_cfg = load_checkpoint(args.init_student).config
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = {"training_volumes": train_names, "validation_volumes": val_names,
            "seed": args.seed, "command": "oneshot " + " ".join(args.argv)}
    summary: dict[str, Any] = {"device": str(dev), "workers": workers,
                               "gpu": torch.cuda.get_device_name(dev)
                               if dev.type == "cuda" else None,
                               "training_volumes": train_names,
                               "validation_volumes": val_names, "phases": {}}

    def write_summary() -> None:
        summary["wall_minutes"] = round((time.monotonic() - started) / 60, 3)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    teacher_dir = args.teacher
    if teacher_dir is None and (args.teacher_minutes or args.teacher_steps):
        teacher_dir = out / "teacher"
        _train_teacher(args, teacher_cfg, teacher_dir, str(dev), workers, train, val_used,
                       dict(base, recipe="moe"))
        summary["phases"]["teacher"] = _manifest(teacher_dir)
        summary["gate_check"] = summary["phases"]["teacher"]["gates"]
        write_summary()
    for name, lam, mu, cap, budget in _student_phases(args, teacher_dir):
        steps, minutes = _budget(cap, budget)
        recipe = MeanDistillRecipe(steps=steps, minutes=minutes, teacher_weight=lam,
                                   feature_weight=mu, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, crop=args.crop, device=str(dev),
                                   workers=workers,
                                   init_from=str(args.init_student) if args.init_student
                                   else None)
        distill_mean_student(teacher_dir if recipe.uses_teacher else None, train, student_cfg,
                             out / name, recipe, progress=_progress(name),
                             val_volumes=val_used, provenance=dict(base))
        summary["phases"][name] = _manifest(out / name)
        write_summary()
    write_summary()
    return summary


def _train_teacher(args: argparse.Namespace, config: Any, teacher_dir: Path, device: str,
                   workers: int, train: list, val_used: list | None,
                   provenance: dict[str, Any]) -> None:
    """The MoE mean teacher on the phase's step or time budget."""
    from bids_mrisr.sr.training.regression import RegressionRecipe, train_mean_regressor

    steps, minutes = _budget(args.teacher_steps, args.teacher_minutes)
    recipe = RegressionRecipe(steps=steps, minutes=minutes, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed, crop=args.crop, device=device,
                              workers=workers,
                              save_every=10**9)  # the clock, not a resume, ends the call
    log.info("teacher: %s", config)
    train_mean_regressor(train, config, teacher_dir, recipe, progress=_progress("teacher"),
                         val_volumes=val_used, provenance=provenance)


def _student_phases(args: argparse.Namespace, teacher_dir: Path | None,
                    ) -> list[tuple[str, float, float, int | None, float | None]]:
    """(name, lambda, mu, step cap, minutes) of each student phase asked for: distilled from
    the teacher (when there is one), and the same network without it (the comparison)."""
    phases = []
    if teacher_dir is not None and (args.distill_minutes or args.distill_steps):
        phases.append(("student", args.lam, args.mu, args.distill_steps, args.distill_minutes))
    if args.plain_minutes or args.plain_steps:
        phases.append(("student_plain", 0.0, 0.0, args.plain_steps, args.plain_minutes))
    return phases


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    summary = run(args)
    for name, phase in summary["phases"].items():
        metrics = phase.get("metrics") or {}
        log.info("%s: %s steps in %s min; held-out gain %s dB; sha256 %s", name,
                 phase["steps"], phase["minutes"],
                 f"{metrics['gain_db']:+.2f}" if "gain_db" in metrics else "n/a",
                 phase["sha256"])
    log.info("done in %.1f min; summary in %s", summary["wall_minutes"],
             args.out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
