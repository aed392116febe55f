"""Pack the training volumes into one compressed npz for a one-shot GPU call.

The GPU machine has no nibabel, nipype or pybids, so the volumes are prepared HERE exactly as
``bids_mrisr train`` prepares them (:func:`bids_mrisr.bids.training_data.collect_volumes`: the app's
preprocessing chain plus the bundled volumes), cropped to the head's bounding box (the
background outside it only costs bytes) and stored as float16. The result is derived from
licensed data: it is git-ignored and travels to the GPU machine with ``carry`` only.

    .venv/bin/python scripts/gpu/pack.py [--cache /tmp/pack-cache] [--out scripts/gpu/volumes.npz]

forrest01 and adi01 are the benchmark's test subjects: refused, whatever the arguments say.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEST_SET = ("forrest01", "adi01")
PARTICIPANTS = ("bc01", "peds01", "stroke01", "uih01", "uih02")
VALIDATION = ("colin27",)
FOREGROUND = 0.05
"""Normalised intensity above which a voxel is head (as the crop sampler counts it)."""


def head_box(volume: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the voxels above :data:`FOREGROUND`, widened by ``margin``."""
    box = []
    for axis in range(volume.ndim):
        others = tuple(a for a in range(volume.ndim) if a != axis)
        hits = np.flatnonzero((volume > FOREGROUND).any(axis=others))
        if hits.size == 0:
            box.append(slice(None))
            continue
        box.append(slice(max(0, hits[0] - margin), min(volume.shape[axis], hits[-1] + 1 + margin)))
    return tuple(box)


def to_float16(volume: np.ndarray, step: float) -> np.ndarray:
    """float16 on an absolute grid of ``step`` (a power of two, so float16 holds it exactly
    below 2): float16's own relative precision spends most bytes on background noise, which
    a fixed step compresses away. 2^-8 of the normalised white matter is ~59 dB of PSNR,
    far finer than the 35-40 dB the networks reach."""
    return (np.round(np.asarray(volume, dtype=np.float32) / step) * step).astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bids-dir", type=Path, default=Path(os.environ.get(
        "BIDS_MRISR_TEST_DATA", "/work/shared/data/ds-real")))
    parser.add_argument("--participants", nargs="+", default=list(PARTICIPANTS))
    parser.add_argument("--validation", nargs="+", default=list(VALIDATION))
    parser.add_argument("--max-spacing", type=float, default=1.2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bids_mrisr-pack-cache"),
                        help="prepared volumes (.npy) reused between runs")
    parser.add_argument("--out", type=Path, default=HERE / "volumes.npz")
    parser.add_argument("--margin", type=int, default=8, help="voxels kept around the head")
    parser.add_argument("--step-bits", type=int, default=8, choices=range(6, 12),
                        metavar="{6..11}", help="training volumes are rounded to steps of "
                        "2^-BITS (8: ~40 MB in all); the validation volume to 2^-10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from bids_mrisr.bids.training_data import collect_volumes
    from bids_mrisr.cli.parser import expand_labels

    train_labels = expand_labels(args.participants, "sub-")
    val_labels = expand_labels(args.validation, "sub-")
    banned = sorted(set(TEST_SET) & (set(train_labels) | set(val_labels)))
    if banned:
        print(f"refusing {' '.join(banned)}: the benchmark's test set is never packed",
              file=sys.stderr)
        return 2
    found = collect_volumes(args.bids_dir.absolute(), train_labels, val_labels,
                            args.max_spacing, bundled=True, cache=args.cache)
    if any(t in name for name in found.train_names + found.val_names for t in TEST_SET):
        raise RuntimeError("a test-set volume was collected")  # a guard against label drift
    arrays: dict[str, np.ndarray] = {}
    for prefix, volumes, names in (("train", found.train, found.train_names),
                                   ("val", found.val, found.val_names)):
        for i, (volume, name) in enumerate(zip(volumes, names, strict=True)):
            box = head_box(volume, args.margin)
            step = 2.0 ** -(args.step_bits if prefix == "train" else 10)
            arrays[f"{prefix}_{i}"] = to_float16(volume[box], step)
            print(f"{prefix} {name}: {volume.shape} -> {arrays[f'{prefix}_{i}'].shape}")
        arrays[f"{prefix}_names"] = np.array(names, dtype=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, "
          f"{len(found.train)} training + {len(found.val)} validation volume(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
