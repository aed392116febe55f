"""Quality benchmark: what users get, against plain cubic resampling of the same input.

For each held-out real volume and each simulated acquisition (thick-slice factor, axis, slice
profile, noise) this script:

1. makes the ground truth: the raw scan, reoriented to RAS+ and (if needed) resampled to an
   isotropic grid of its finest spacing, in the scanner's own intensities;
2. simulates the low-resolution acquisition with ``bids_mrisr.sr.degrade`` and writes it as a
   NIfTI file in a throw-away BIDS dataset, with the header a scanner would write;
3. runs the app itself (``bids_mrisr BIDS OUT participant --model M``: validation skipped,
   preprocessing included, one shared work dir so preprocessing runs once per input);
4. scores every output against the truth inside the head mask (PSNR and SSIM, peak = the
   truth's 99.9th percentile in the mask), beside plain cubic and linear resampling of the raw
   low-resolution file onto the same grid (no N4, no normalisation).

Results go to a JSON file (every case, every method, seconds per app call, the engine's own
seconds and the adaptation's from the sidecar) and a table is printed. Run
``python benchmarks/quality.py --help`` for the options; the defaults are the full
matrix of issue 4 (about 108 cases; use ``--factors 3 --axes 2`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.demo import thick_slice_affine
from bids_mrisr.image.resample import resample_to_resolution
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.training.evaluate import score_in_head as score

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ds-real"
HELD_OUT = ("colin27", "seg3d01", "philips01")
"""Never used in training (docs/model-card.md lists the training volumes)."""
REALISTIC_NOISE = 0.02
"""Rician sigma as a fraction of the 99.5th percentile: ~SNR 50, a typical 3T T1w."""
APP_METHODS = ("interp", "student", "teacher")
ISOTROPIC = "iso"


def truth_volume(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """RAS+, isotropic at the finest spacing, raw intensities (float32)."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    resolution = min(zooms)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data, affine = resample_to_resolution(data, image.affine, resolution)
    return data, affine, resolution


def lowres_image(truth: np.ndarray, affine: np.ndarray, resolution: float,
                 params: Degradation, seed: int, isotropic: bool = False) -> nib.Nifti1Image:
    """The simulated acquisition with the header a scanner would write (slice k centred at
    truth voxel (k + 0.5) * factor - 0.5 along the thick axis). ``isotropic``: every axis is
    acquired so (e.g. 2 mm isotropic from a 1 mm truth), the noise added once, at the end."""
    rng = np.random.default_rng(seed)
    axes = (0, 1, 2) if isotropic else (params.axis,)
    low = truth
    for axis in axes:
        last = axis == axes[-1]
        step = replace(params, axis=axis, noise_fraction=params.noise_fraction if last else 0.0)
        low, _ = degrade(low, (resolution,) * 3, step, rng)
        affine = thick_slice_affine(affine, axis, params.factor)
    image = nib.Nifti1Image(low.astype(np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    return image


def plain_resample(image: nib.Nifti1Image, resolution: float, order: int) -> np.ndarray:
    """Resampling of the raw low-resolution file onto the app's grid (what a user would do
    without bids_mrisr), with the app's grid definition."""
    data = np.asanyarray(image.dataobj).astype(np.float32)
    return resample_to_resolution(data, image.affine, resolution, order=order)[0]


def run_app(bids: Path, out: Path, work: Path, label: str, method: str, weights: str | None,
            threads: int, extra: tuple[str, ...] = ()) -> tuple[Path, float]:
    """One participant-level run of the installed app; returns its output and wall time."""
    cmd = [sys.executable, "-c", "import sys; from bids_mrisr.cli.run import main; "
           "sys.exit(main())", str(bids), str(out), "participant",
           "--participant-label", label, "--model", method, "-w", str(work),
           "--skip-bids-validation", "--omp-nthreads", str(threads), "--nprocs", "1"]
    if weights:
        cmd += ["--weights", weights]
    cmd += list(extra)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    found = sorted((out / f"sub-{label}" / "anat").glob("*_T1w.nii.gz"))
    found = [p for p in found if "_desc-sr_" in p.name]
    if len(found) != 1:
        raise RuntimeError(f"expected one SR output for sub-{label}, found {found}")
    return found[0], seconds


def cases(args: argparse.Namespace) -> list[tuple[str, Degradation, bool]]:
    """(tag, degradation, isotropic): ``--axes iso`` degrades all three axes alike."""
    out = []
    for factor in args.factors:
        for axis in args.axes:
            for profile in args.profiles:
                for noise in args.noise:
                    tag = f"f{factor:g}a{axis}{profile[0]}n{int(round(noise * 1000))}"
                    out.append((tag.replace(".", "p"), Degradation(
                        axis=0 if axis == ISOTROPIC else int(axis), factor=factor,
                        profile=profile, noise_fraction=noise), axis == ISOTROPIC))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get(
        "BIDS_MRISR_TEST_DATA", DEFAULT_DATA)))
    p.add_argument("--subjects", nargs="+", default=list(HELD_OUT))
    p.add_argument("--factors", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    p.add_argument("--axes", nargs="+", choices=("0", "1", "2", ISOTROPIC),
                   default=["0", "1", "2"],
                   help="thick axis of each simulated scan; iso: every axis coarse by the "
                        "factor (e.g. 2 mm isotropic), the output on the truth's grid")
    p.add_argument("--profiles", nargs="+", default=["gaussian", "box"])
    p.add_argument("--noise", nargs="+", type=float, default=[0.0, REALISTIC_NOISE])
    p.add_argument("--methods", nargs="+", default=["interp", "student"],
                   help="app methods to run (cubic and linear are always scored)")
    p.add_argument("--weights", action="append", default=[], metavar="METHOD=DIR",
                   help="weights for an app method (default: the shipped ones)")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=METHOD:DIR",
                   help="another checkpoint to score through the app, e.g. a baseline U-Net")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:FLAGS",
                   help="an app method with its --weights and extra app flags, e.g. "
                        "'student-1view=student:--flip-views 1'")
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="also score 'student+adapt': the student with --adapt auto and this "
                        "many steps (0: not scored)")
    p.add_argument("--acquisition-type", choices=("2D", "3D"), default=None,
                   help="write this MRAcquisitionType into each simulated scan's sidecar, as "
                        "dcm2niix would (the app tells the student a box profile for 2D); "
                        "default: no sidecar, the app reads the profile from the voxels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=HERE / "results" / "quality.json")
    p.add_argument("--keep", type=Path, default=None, help="keep the scratch dataset here")
    return p


def _labelled_spec(item: str) -> tuple[str, str, str]:
    """``LABEL=METHOD:REST`` (``--extra``, ``--variant``) -> (label, method, rest)."""
    label, spec = item.split("=", 1)
    method, rest = spec.split(":", 1)
    return label, method, rest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    weights = dict(w.split("=", 1) for w in args.weights)
    runs: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        (m, m, weights.get(m), ()) for m in args.methods]
    if args.adapt_steps > 0:
        runs.append(("student+adapt", "student", weights.get("student"),
                     ("--adapt", "auto", "--adapt-steps", str(args.adapt_steps))))
    runs += [(label, method, directory, ())
             for label, method, directory in map(_labelled_spec, args.extra)]
    runs += [(label, method, weights.get(method), tuple(shlex.split(flags)))
             for label, method, flags in map(_labelled_spec, args.variant)]
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="mrisr-quality-"))
    bids, work = scratch / "bids", scratch / "work"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "bids_mrisr quality benchmark", "BIDSVersion": "1.10.0"}))
    results = []
    header = f"{'volume':<10} {'case':<14} {'method':<14} {'PSNR':>7} {'gain':>7} {'SSIM':>7} " \
             f"{'s':>6}"
    print(header)
    try:
        for subject in args.subjects:
            src = sorted((args.data / f"sub-{subject}" / "anat").glob(f"sub-{subject}*_T1w.nii*"))
            if not src:
                raise SystemExit(f"no T1w for sub-{subject} under {args.data}")
            truth, affine, resolution = truth_volume(src[0])
            for tag, params, isotropic in cases(args):
                label = f"{subject}{tag}".replace("_", "")
                image = lowres_image(truth, affine, resolution, params, args.seed, isotropic)
                # an isotropic input's finest spacing is coarse: ask for the truth's grid
                grid = ("--output-resolution", f"{resolution:.6g}") if isotropic else ()
                anat = bids / f"sub-{label}" / "anat"
                anat.mkdir(parents=True, exist_ok=True)
                nib.save(image, str(anat / f"sub-{label}_T1w.nii.gz"))
                if args.acquisition_type:
                    (anat / f"sub-{label}_T1w.json").write_text(json.dumps(
                        {"MRAcquisitionType": args.acquisition_type}))
                row = {"volume": subject, "case": tag,
                       "degradation": {**asdict(params), "isotropic": isotropic},
                       "methods": {}}
                for name, order in (("cubic", 3), ("linear", 1)):
                    start = time.perf_counter()
                    est = plain_resample(image, resolution, order)
                    row["methods"][name] = {**score(est, truth),
                                            "seconds": time.perf_counter() - start}
                for label_m, method, directory, extra in runs:
                    out = scratch / f"out-{label_m}"
                    path, seconds = run_app(bids, out, work, label, method, directory,
                                            args.threads, (*grid, *extra))
                    est = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
                    sidecar = json.loads(path.with_name(
                        path.name.replace(".nii.gz", ".json")).read_text())
                    info = sidecar.get("SuperResolution", {})
                    row["methods"][label_m] = {
                        **score(est, truth), "seconds": seconds,
                        "sr_seconds": info.get("Seconds"),
                        "adapt_seconds": info.get("Adaptation", {}).get("Seconds")}
                base = row["methods"]["cubic"]["psnr"]
                for name, m in row["methods"].items():
                    m["gain_db"] = m["psnr"] - base
                    print(f"{subject:<10} {tag:<14} {name:<14} {m['psnr']:7.2f} "
                          f"{m['gain_db']:+7.2f} {m['ssim']:7.4f} {m['seconds']:6.1f}",
                          flush=True)
                results.append(row)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(_report(args, results), indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    _summary(results)
    return 0


def _report(args: argparse.Namespace, results: list[dict]) -> dict:
    return {"command": " ".join(sys.argv), "machine": platform.platform(),
            "cpus": os.cpu_count(), "threads": args.threads, "cases": results}


def _summary(results: list[dict]) -> None:
    """Median and worst gain over cubic per method, over all cases."""
    if not results:
        return
    print("\nmethod        median gain   worst gain   median SSIM-cubic SSIM   median s")
    for name in results[0]["methods"]:
        gains = [r["methods"][name]["gain_db"] for r in results]
        dssim = [r["methods"][name]["ssim"] - r["methods"]["cubic"]["ssim"] for r in results]
        secs = [r["methods"][name]["seconds"] for r in results]
        print(f"{name:<14} {np.median(gains):+9.2f} {min(gains):+12.2f} "
              f"{np.median(dssim):+22.4f} {np.median(secs):10.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
