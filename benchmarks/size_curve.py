"""Gain against network size at equal training compute (issue: capacity where users can afford it).

Trains one student per ``--widths`` entry with ``bids_mrisr train`` for the same wall time on
the same threads (the learning-rate schedule follows the time cap, so every run ends decayed),
then reads each checkpoint's parameter count, steps and the trainer's validation helper
(colin27, 3x thick axial Gaussian slices, 1 % noise, 64 central slices: a validation figure,
not a test figure). Results go to ``--output`` (JSON) and a table is printed. Equal minutes are
equal compute only on a quiet machine: the JSON records the steps each run made.

    python benchmarks/size_curve.py --widths 16 32 48 --minutes 12 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ds-real"
TRAINING = ("bc01", "peds01", "stroke01", "uih01", "uih02")
"""The campaign's training volumes (scripts/campaign/run.sh); the test set stays out."""


def train_one(data: Path, out: Path, width: int, minutes: float, threads: int,
              cache: Path | None, participants: tuple[str, ...] = TRAINING,
              bundled: bool = True) -> dict:
    """Train one student for ``minutes`` and read back its size, steps and helper figure."""
    out.mkdir(parents=True, exist_ok=True)
    if cache is not None and not (out / "work").exists():
        (out / "work").symlink_to(cache.resolve())  # preprocessing done once
    command = [sys.executable, "-m", "bids_mrisr.cli.run", "train", str(data), str(out),
               "--participant-label", *participants, "--validation-label", "colin27",
               "--batch-size", "16", "--student-steps", "1000000",
               "--student-minutes", str(minutes), "--threads", str(threads),
               "--acquisition-input", "--base-width", str(width), "--seed", "0",
               *([] if bundled else ["--no-bundled"])]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    meta = json.loads((out / "student" / "model.json").read_text())
    prov = meta["provenance"]
    from bids_mrisr.sr.checkpoint import load_checkpoint

    params = sum(p.numel() for p in load_checkpoint(out / "student").model.parameters())
    return {"width": width, "params": params, "minutes": prov["minutes"],
            "steps": prov["steps"], "wall_seconds": round(time.perf_counter() - started, 1),
            "validation_colin27": prov.get("metrics"), "sha256": meta.get("sha256"),
            "threads": threads, "participants": list(participants), "bundled": bundled,
            "training_volumes": prov.get("training_volumes")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get(
        "BIDS_MRISR_TEST_DATA", DEFAULT_DATA)))
    p.add_argument("--widths", nargs="+", type=int, default=[16, 32, 48])
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/bids_mrisr-size-curve"))
    p.add_argument("--cache", type=Path, default=None,
                   help="a preprocessing cache to reuse (e.g. scripts/campaign/out/work)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "size_curve.json")
    args = p.parse_args(argv)
    rows = [train_one(args.data, args.scratch / f"w{w}", w, args.minutes, args.threads,
                      args.cache) for w in args.widths]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"runs": rows, "minutes_each": args.minutes,
                                       "set": "validation (colin27)"}, indent=2) + "\n")
    print(f"\nequal compute: {args.minutes:g} min each, {args.threads} thread(s); "
          "VALIDATION figures (colin27, trainer's helper)")
    print(f"{'width':>5} {'params':>9} {'steps':>7} {'cubic dB':>9} {'model dB':>9} {'gain':>6}")
    for r in rows:
        m = r["validation_colin27"] or {}
        print(f"{r['width']:>5} {r['params']:>9,} {r['steps']:>7} "
              f"{m.get('psnr_cubic', float('nan')):>9.2f} "
              f"{m.get('psnr_model', float('nan')):>9.2f} {m.get('gain_db', float('nan')):>+6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
