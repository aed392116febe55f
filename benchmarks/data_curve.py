"""Gain against the number of training volumes at equal training compute (issue 24: where a
target is missed, the curve that shows why).

Trains the same network (``--width``, told the acquisition) for the same wall time on nested
subsets of the campaign's training volumes, then scores every checkpoint through the app with
``benchmarks/quality.py`` on the validation volumes (colin27, seg3d01, philips01: they chose
the model, so these are validation figures). Results go to ``--output`` (JSON: each run's
volumes, steps and helper figure, and the quality rows) and a table is printed.

    python benchmarks/data_curve.py --minutes 20 --threads 1 --cache /tmp/dc-cache
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from size_curve import DEFAULT_DATA, TRAINING, train_one  # noqa: E402

SUBSETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "1": (("uih01",), False),
    "2": (("uih01", "peds01"), False),
    "5": (("uih01", "peds01", "bc01", "stroke01"), False),
    "8": (TRAINING, True),  # the campaign's participants (scripts/campaign/run.sh)
}
"""Nested subsets, named by their volume count (stroke01 brings its T1w and T2w; the bundled
MNI152 and pydeface mean head come with the campaign's full set, as in scripts/campaign)."""


def score(runs: list[dict], scratch: Path, threads: int, cases: list[str]) -> dict:
    """One quality.py call for every checkpoint, so that cubic is scored once per case."""
    output = scratch / "quality.json"
    extras = [a for r in runs for a in ("--extra", f"n{r['subset']}=student:{r['dir']}")]
    subprocess.run([sys.executable, str(HERE / "quality.py"), "--set", "validation",
                    *cases, "--methods", *extras, "--threads", str(threads),
                    "--output", str(output)], check=True)
    return json.loads(output.read_text())


def gains_of(quality: dict, label: str) -> list[float]:
    """``label``'s gain over cubic in each case of a quality.py report, in case order."""
    return [case["methods"][label]["gain_db"] for case in quality["cases"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get(
        "BIDS_MRISR_TEST_DATA", DEFAULT_DATA)))
    p.add_argument("--subsets", nargs="+", choices=sorted(SUBSETS), default=sorted(SUBSETS))
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/bids_mrisr-data-curve"))
    p.add_argument("--cache", type=Path, default=None,
                   help="a preprocessing folder shared by the runs (done once per volume)")
    p.add_argument("--cases", default="--factors 3 --axes 2 --profiles gaussian box "
                   "--noise 0.02", help="quality.py case options, given with '=' since they start "
                   "with dashes: --cases='--factors 2 --axes iso'")
    p.add_argument("--output", type=Path, default=HERE / "results" / "data_curve.json")
    args = p.parse_args(argv)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in args.subsets:
        participants, bundled = SUBSETS[name]
        out = args.scratch / f"n{name}"
        row = train_one(args.data, out, args.width, args.minutes, args.threads, args.cache,
                        participants, bundled)
        runs.append({**row, "subset": name, "dir": str(out / "student")})
    quality = score(runs, args.scratch, args.threads, args.cases.split())
    for r in runs:
        gains = gains_of(quality, f"n{r['subset']}")
        r["validation_gains_db"] = gains
        r["validation_median_gain_db"] = statistics.median(gains) if gains else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "runs": runs, "minutes_each": args.minutes, "width": args.width,
        "cases": args.cases, "set": "validation (colin27, seg3d01, philips01)",
        "quality": quality}, indent=2) + "\n")
    print(f"\nequal compute: {args.minutes:g} min each, width {args.width}, {args.threads} "
          "thread(s); VALIDATION figures through the app (gain over cubic, dB)")
    print(f"{'volumes':>7} {'steps':>7} {'helper':>7} {'median':>7}  cases")
    for r in runs:
        helper = (r["validation_colin27"] or {}).get("gain_db", float("nan"))
        med = r["validation_median_gain_db"]
        print(f"{len(r['training_volumes'] or []):>7} {r['steps']:>7} {helper:>+7.2f} "
              f"{med if med is not None else float('nan'):>+7.2f}  "
              + " ".join(f"{g:+.2f}" for g in r["validation_gains_db"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
