"""Preprocessing benchmark: seconds and peak RSS for one whole-head 256^3 volume (sub-bc01).

Each repeat runs reorient -> N4 -> normalise -> target grid in a fresh subprocess (so peak RSS
is that of the preprocessing alone, as in a nipype MultiProc worker), then the parent reports
medians. Results go to benchmarks/results/preproc.json and a table on stdout.

    python benchmarks/preproc.py [--repeats 3] [--input PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_INPUT = (Path(os.environ.get("BIDS_MRISR_TEST_DATA",
                                     Path(__file__).resolve().parents[2] / "shared/data/ds-real"))
                 / "sub-bc01/anat/sub-bc01_T1w.nii.gz")
RESULTS = Path(__file__).resolve().parent / "results" / "preproc.json"


def worker(in_file: Path, threads: int) -> dict:
    from bids_mrisr.image.n4 import n4_correct
    from bids_mrisr.image.normalize import normalise_file
    from bids_mrisr.image.reorient import reorient_to_ras
    from bids_mrisr.image.resample import resample_file

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        reoriented = reorient_to_ras(in_file, work / "ras.nii")
        timings["reorient_s"] = time.perf_counter() - start
        start = time.perf_counter()
        corrected, _ = n4_correct(reoriented, work / "n4.nii", work / "bias.nii",
                                  threads=threads)
        timings["n4_s"] = time.perf_counter() - start
        start = time.perf_counter()
        normalised, params = normalise_file(corrected, work / "norm.nii", work / "p.json")
        timings["normalise_s"] = time.perf_counter() - start
        start = time.perf_counter()
        resample_file(normalised, work / "grid.nii", None)
        timings["resample_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.input, args.threads)))
        return 0
    if not args.input.is_file():
        print(f"input not found: {args.input} (set BIDS_MRISR_TEST_DATA)", file=sys.stderr)
        return 66
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run([sys.executable, __file__, "--worker", "--input", str(args.input),
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(runs[0])
    medians = {key: statistics.median(run[key] for run in runs) for key in keys}
    result = {"benchmark": "preproc", "input": str(args.input), "repeats": args.repeats,
              "threads": args.threads, "cpu_count": os.cpu_count(), "runs": runs,
              "median": medians,
              "targets": {"total_s": 20.0, "peak_rss_mb": 2048.0}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"preprocessing {args.input.name}: median of {args.repeats} runs, "
          f"{args.threads} thread(s)")
    print(f"{'step':<14}{'median':>10}")
    for key in keys:
        unit = "MB" if key.endswith("_mb") else "s"
        print(f"{key:<14}{medians[key]:>10.2f} {unit}")
    print(f"target: total <= 20 s, peak RSS <= 2048 MB -> "
          f"{'met' if medians['total_s'] <= 20 and medians['peak_rss_mb'] <= 2048 else 'MISSED'}")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
