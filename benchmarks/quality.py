"""Quality benchmark: what users get, against plain cubic resampling of the same input.

For each real volume of the chosen set and each simulated acquisition (thick-slice factor,
axis, slice profile, noise) this script:

1. makes the ground truth: the raw scan, reoriented to RAS+ and (if needed) resampled to an
   isotropic grid of its finest spacing, in the scanner's own intensities;
2. simulates the low-resolution acquisition with ``bids_mrisr.sr.degrade`` and writes it as a
   NIfTI file in a throw-away BIDS dataset, with the header a scanner would write;
3. runs the app itself (``bids_mrisr BIDS OUT participant --model M``: validation skipped,
   preprocessing included, one shared work dir so preprocessing runs once per input);
4. scores every output against the truth inside the head mask (PSNR and SSIM, peak = the
   truth's 99.9th percentile in the mask), beside plain cubic and linear resampling of the raw
   low-resolution file onto the same grid (no N4, no normalisation). Voxels that depend on a
   slice the source data filled in (``INTERPOLATED_SLICES``) are left out of the scores.
   ``--ensemble`` also scores the voxel mean of several runs' outputs: a diagnostic of what
   averaging networks (a teacher's uniform gates) would buy, not something the app writes.

Two sets of volumes (``--set``): VALIDATION_SET chose every model and setting so far, so its
figures are validation figures; TEST_SET is scored once per shipped model and reported as is.
A volume in the training data of a run's weights (``provenance.training_volumes`` of the
checkpoint's ``model.json`` and of its variants) is flagged "seen in training" and left out of
the summaries.

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
from scipy import ndimage

from bids_mrisr.bids.demo import thick_slice_affine
from bids_mrisr.image.resample import resample_to_resolution
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.training.evaluate import psnr, score_in_head, scoring_mask, ssim
from bids_mrisr.sr.variants import VARIANTS
from bids_mrisr.sr.weights import default_weights

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ds-real"
VALIDATION_SET = ("colin27", "seg3d01", "philips01")
"""Never used in training; they chose every model and setting so far, so figures on them are
validation figures (docs/model-card.md)."""
TEST_SET = ("adi01", "forrest01")
"""Scored once per shipped model and reported as is. forrest01 is in the shipped student's
training data: such cases are flagged from the weights' provenance, not from this list."""
SETS = {"validation": VALIDATION_SET, "test": TEST_SET, "all": VALIDATION_SET + TEST_SET}
SET_HEADERS = {"validation": "VALIDATION (these volumes chose the model)",
               "test": "TEST (scored once per shipped model, reported as is)",
               "other": "OTHER (in neither set)"}
HELD_OUT = VALIDATION_SET
"""Never used in training (the default of adapt_ablation.py); kept for old imports."""
INTERPOLATED_SLICES: dict[str, tuple[tuple[int, int], ...]] = {"adi01": ((2, 114),)}
"""(array axis of the stored NIfTI, 0-based index) of slices the source data filled in (the
mean of their neighbours: a DICOM instance is missing; ds-real README, the sidecar's Note).
Voxels of the truth grid they influence are left out of the scores."""
INFLUENCE = 1e-3
"""A truth voxel whose resampling weight on a filled slice exceeds this is left out of PSNR; a
voxel whose SSIM window puts more than this weight on such voxels is left out of SSIM."""
SSIM_SIGMA = 1.5
"""The SSIM window of ``bids_mrisr.sr.training.evaluate.ssim`` (its default)."""
REALISTIC_NOISE = 0.02
"""Rician sigma as a fraction of the 99.5th percentile: ~SNR 50, a typical 3T T1w."""
APP_METHODS = ("interp", "student", "teacher")
ISOTROPIC = "iso"


def truth_file(data: Path, subject: str, contrast: str) -> Path | None:
    """The 1 mm scan of ``subject`` in ``contrast`` under ``data`` (None: it has none)."""
    found = sorted((data / f"sub-{subject}" / "anat").glob(f"sub-{subject}*_{contrast}.nii*"))
    return found[0] if found else None


def truth_volume(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """RAS+, isotropic at the finest spacing, raw intensities (float32)."""
    return _truth_grid(nib.load(str(path)))


def _truth_grid(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray, float]:
    image = nib.as_closest_canonical(image)
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    resolution = min(zooms)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data, affine = resample_to_resolution(data, image.affine, resolution)
    return data, affine, resolution


def truth_valid(path: Path, slices: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    """Boolean mask on :func:`truth_volume`'s grid: False where a voxel's value draws more than
    :data:`INFLUENCE` of its weight from one of ``slices`` ((stored axis, index) of the file);
    None when there are none. The flags go through the same reorientation and resampling."""
    if not slices:
        return None
    image = nib.load(str(path))
    flags = np.zeros(image.shape[:3], dtype=np.float32)
    for axis, index in slices:
        flags[(slice(None),) * axis + (index,)] = 1.0
    flagged = nib.Nifti1Image(flags, image.affine, image.header)
    flagged.header.set_data_dtype(np.float32)
    flagged.header.set_slope_inter(1.0, 0.0)
    return np.abs(_truth_grid(flagged)[0]) <= INFLUENCE


def score(estimate: np.ndarray, truth: np.ndarray,
          valid: np.ndarray | None = None) -> dict[str, float]:
    """``score_in_head`` (PSNR/SSIM in the truth's head mask); with ``valid`` (on the truth's
    grid), PSNR leaves out the invalid voxels and SSIM the voxels whose window reaches them
    (weight > :data:`INFLUENCE`). Head mask and peak are those of ``score_in_head``."""
    if valid is None:
        return score_in_head(estimate, truth)
    shape = tuple(min(a, b) for a, b in zip(estimate.shape, truth.shape, strict=True))
    crop = tuple(slice(0, n) for n in shape)
    est = np.asarray(estimate[crop], dtype=np.float32)
    ref = np.asarray(truth[crop], dtype=np.float32)
    ok = np.asarray(valid[crop], dtype=bool)
    head, top = scoring_mask(ref)
    reach = ndimage.gaussian_filter((~ok).astype(np.float32), SSIM_SIGMA, mode="nearest")
    return {"psnr": psnr(est, ref, head & ok, top),
            "ssim": ssim(est, ref, head & (reach <= INFLUENCE), top)}


def set_of(subject: str) -> str:
    """'validation', 'test' or 'other'."""
    if subject in VALIDATION_SET:
        return "validation"
    return "test" if subject in TEST_SET else "other"


def select_subjects(choice: str, subjects: list[str] | None) -> list[str]:
    """``--subjects`` if given, else the ``--set``; validation first, then test, then others
    (the table prints one section per set)."""
    chosen = list(dict.fromkeys(subjects if subjects else SETS[choice]))
    order = ("validation", "test", "other")
    return sorted(chosen, key=lambda s: order.index(set_of(s)))


def run_weights(method: str, directory: str | None) -> Path | None:
    """The checkpoint an app method runs with: the given one, else the app's default
    (``interp`` has none)."""
    if directory:
        return Path(directory)
    return None if method == "interp" else default_weights(method)


def training_volumes(weights: Path | None) -> list[str] | None:
    """``provenance.training_volumes`` of a checkpoint and of its variants (any of them may
    run); [] without weights, None when no ``model.json`` lists them (unknown)."""
    if weights is None:
        return []
    found: list[str] | None = None
    for directory in (Path(weights), *(Path(weights) / v for v in VARIANTS)):
        volumes = _listed_volumes(directory)
        if volumes is not None:
            found = sorted({*(found or []), *volumes})
    return found


def ran_training_volumes(weights: Path | None, variant: str | None) -> list[str] | None:
    """``provenance.training_volumes`` of the weights the app actually ran: the checkpoint's
    ``variant`` sub-folder (from the output sidecar), else the checkpoint itself. Unlike
    :func:`training_volumes`, a variant that did not run does not count."""
    if weights is None:
        return []
    return _listed_volumes(Path(weights) / (variant or ""))


def _listed_volumes(directory: Path) -> list[str] | None:
    """``provenance.training_volumes`` of the checkpoint in ``directory``; None without one."""
    meta = directory / "model.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("provenance", {}).get("training_volumes")


def _volume_key(name: str) -> str:
    """'sub-x/anat/sub-x_T1w.nii.gz' and 'sub-x_T1w' -> 'sub-x_T1w'."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def seen_in_training(source: Path, subject: str, volumes: list[str] | None) -> bool | None:
    """Whether ``source`` (or its whole subject, where the provenance names only subjects) is
    among ``volumes``; None when they are unknown."""
    if volumes is None:
        return None
    keys = {_volume_key(v) for v in volumes}
    return bool(keys & {_volume_key(source.name), f"sub-{subject}", subject})


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
            threads: int, extra: tuple[str, ...] = (), suffix: str = "T1w") -> tuple[Path, float]:
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
    found = sorted((out / f"sub-{label}" / "anat").glob(f"*_{suffix}.nii.gz"))
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
    p.add_argument("--set", dest="volume_set", choices=tuple(SETS), default="validation",
                   help=f"volumes to score: validation ({', '.join(VALIDATION_SET)}; they "
                        f"chose the model), test ({', '.join(TEST_SET)}; scored once per "
                        "shipped model) or all")
    p.add_argument("--contrast", choices=("T1w", "T2w"), default="T1w",
                   help="which 1 mm scan of each subject is the truth (T2w: only stroke01 has "
                        "one, and it is in the student's training data)")
    p.add_argument("--subjects", nargs="+", default=None,
                   help="these subjects instead of --set's")
    p.add_argument("--factors", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    p.add_argument("--axes", nargs="+", choices=("0", "1", "2", ISOTROPIC),
                   default=["0", "1", "2"],
                   help="thick axis of each simulated scan; iso: every axis coarse by the "
                        "factor (e.g. 2 mm isotropic), the output on the truth's grid")
    p.add_argument("--profiles", nargs="+", default=["gaussian", "box"])
    p.add_argument("--noise", nargs="+", type=float, default=[0.0, REALISTIC_NOISE])
    p.add_argument("--methods", nargs="*", default=["interp", "student"],
                   help="app methods to run (cubic and linear are always scored; none: only "
                        "--adapt-steps, --extra and --variant runs)")
    p.add_argument("--weights", action="append", default=[], metavar="METHOD=DIR",
                   help="weights for an app method (default: the shipped ones)")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=METHOD:DIR",
                   help="another checkpoint to score through the app, e.g. a baseline U-Net")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:FLAGS",
                   help="an app method with its --weights and extra app flags, e.g. "
                        "'student-1view=student:--flip-views 1'")
    p.add_argument("--ensemble", action="append", default=[], metavar="LABEL=RUN+RUN[+RUN]",
                   help="also score the voxel mean of runs scored above (labels of --methods, "
                        "--extra or --variant): what averaging networks would buy; not an app "
                        "method, so its seconds are the runs' sum")
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
    ensembles = [_ensemble_spec(item, [label for label, *_ in runs]) for item in args.ensemble]
    subjects = select_subjects(args.volume_set, args.subjects)
    trained_on = {label: training_volumes(run_weights(method, directory))
                  for label, method, directory, _ in runs}
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="mrisr-quality-"))
    bids, work = scratch / "bids", scratch / "work"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "bids_mrisr quality benchmark", "BIDSVersion": "1.10.0"}))
    results = []
    header = f"{'volume':<10} {'case':<14} {'method':<14} {'PSNR':>7} {'gain':>7} {'SSIM':>7} " \
             f"{'s':>6}  note"
    section = None
    try:
        for subject in subjects:
            src = truth_file(args.data, subject, args.contrast)
            if src is None:
                raise SystemExit(f"no {args.contrast} for sub-{subject} under {args.data}")
            if set_of(subject) != section:
                section = set_of(subject)
                print(f"\n{SET_HEADERS[section]}\n{header}", flush=True)
            truth, affine, resolution = truth_volume(src)
            filled = INTERPOLATED_SLICES.get(subject, ())
            valid = truth_valid(src, filled)
            seen = {label: seen_in_training(src, subject, volumes)
                    for label, volumes in trained_on.items()}
            for tag, params, isotropic in cases(args):
                label = f"{subject}{tag}".replace("_", "")
                image = lowres_image(truth, affine, resolution, params, args.seed, isotropic)
                # an isotropic input's finest spacing is coarse: ask for the truth's grid
                grid = ("--output-resolution", f"{resolution:.6g}") if isotropic else ()
                anat = bids / f"sub-{label}" / "anat"
                anat.mkdir(parents=True, exist_ok=True)
                nib.save(image, str(anat / f"sub-{label}_{args.contrast}.nii.gz"))
                if args.acquisition_type:
                    (anat / f"sub-{label}_{args.contrast}.json").write_text(json.dumps(
                        {"MRAcquisitionType": args.acquisition_type}))
                row = {"volume": subject, "contrast": args.contrast, "set": set_of(subject),
                       "case": tag,
                       "degradation": {**asdict(params), "isotropic": isotropic},
                       "seen_in_training": dict(seen), "methods": {}}
                if valid is not None:
                    row["left_out"] = {"filled_slices": [list(f) for f in filled],
                                       "truth_voxels": int((~valid).sum())}
                for name, order in (("cubic", 3), ("linear", 1)):
                    start = time.perf_counter()
                    est = plain_resample(image, resolution, order)
                    row["methods"][name] = {**score(est, truth, valid),
                                            "seconds": time.perf_counter() - start,
                                            "seen_in_training": False}
                estimates: dict[str, np.ndarray] = {}
                for label_m, method, directory, extra in runs:
                    out = scratch / f"out-{label_m}"
                    path, seconds = run_app(bids, out, work, label, method, directory,
                                            args.threads, (*grid, *extra), args.contrast)
                    est = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
                    if any(label_m in members for _, members in ensembles):
                        estimates[label_m] = est
                    sidecar = json.loads(path.with_name(
                        path.name.replace(".nii.gz", ".json")).read_text())
                    info = sidecar.get("SuperResolution", {})
                    variant = weights_variant_of(info)
                    ran = ran_training_volumes(run_weights(method, directory), variant)
                    row["methods"][label_m] = {
                        **score(est, truth, valid), "seconds": seconds,
                        "sr_seconds": info.get("Seconds"),
                        "adapt_seconds": info.get("Adaptation", {}).get("Seconds"),
                        "weights_variant": variant,
                        "weights_sha256": info.get("WeightsSHA256"),
                        "seen_in_training": (seen[label_m] if ran is None else
                                             seen_in_training(src, subject, ran))}
                    row["seen_in_training"][label_m] = row["methods"][label_m][
                        "seen_in_training"]
                for name, members in ensembles:
                    row["methods"][name] = score_ensemble(members, estimates, row["methods"],
                                                          truth, valid)
                    row["seen_in_training"][name] = row["methods"][name]["seen_in_training"]
                base = row["methods"]["cubic"]["psnr"]
                for name, m in row["methods"].items():
                    m["gain_db"] = m["psnr"] - base
                    print(row_line(row, name), flush=True)
                results.append(row)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(_report(args, subjects, trained_on, results),
                                                  indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + "\n".join(summary_lines(results)))
    return 0


def _ensemble_spec(item: str, runs: list[str]) -> tuple[str, tuple[str, ...]]:
    """``LABEL=A+B`` -> (label, (A, B)); every member must be a run of this benchmark."""
    label, spec = item.split("=", 1)
    members = tuple(spec.split("+"))
    unknown = [m for m in members if m not in runs]
    if len(members) < 2 or unknown:
        raise SystemExit(f"--ensemble {item}: needs two or more of the runs {runs}"
                         + (f"; not a run: {', '.join(unknown)}" if unknown else ""))
    return label, members


def score_ensemble(members: tuple[str, ...], estimates: dict[str, np.ndarray],
                   scored: dict[str, dict], truth: np.ndarray,
                   valid: np.ndarray | None) -> dict:
    """The row entry of one ``--ensemble``: its members' mean scored like any run; it took
    their seconds, and it has seen a volume in training if one of them has."""
    return {**score(ensemble_mean([estimates[m] for m in members]), truth, valid),
            "seconds": sum(scored[m]["seconds"] for m in members),
            "members": list(members),
            "seen_in_training": any(scored[m]["seen_in_training"] for m in members)}


def ensemble_mean(estimates: list[np.ndarray]) -> np.ndarray:
    """The voxel mean of outputs on one grid (the app writes every run on the same grid)."""
    shapes = {e.shape for e in estimates}
    if len(shapes) != 1:
        raise RuntimeError(f"ensemble members on different grids: {sorted(shapes)}")
    return np.mean(np.stack(estimates), axis=0)


def weights_variant_of(info: dict) -> str | None:
    """The variant sub-folder the app ran (``box``, ``multi-axis``), None for the main weights:
    the sidecar's ``WeightsVariant`` reads ``"NAME: the checkpoint's variant for ..."``."""
    text = info.get("WeightsVariant")
    return str(text).split(":", 1)[0] if text else None


def _note(seen: bool | None, row: dict, variant: str | None = None) -> str:
    notes = ["seen in training"] if seen else ["training data unknown"] if seen is None else []
    if variant:
        notes.append(f"{variant} weights")
    if "left_out" in row:
        notes.append("filled slice masked")
    return "; ".join(notes)


def row_line(row: dict, name: str) -> str:
    """One printed row of the table (flags in the last column)."""
    m = row["methods"][name]
    volume = row["volume"] + ("" if row.get("contrast", "T1w") == "T1w" else " T2w")
    return (f"{volume:<10} {row['case']:<14} {name:<14} {m['psnr']:7.2f} "
            f"{m['gain_db']:+7.2f} {m['ssim']:7.4f} {m['seconds']:6.1f}  "
            f"{_note(m.get('seen_in_training'), row, m.get('weights_variant'))}").rstrip()


def _report(args: argparse.Namespace, subjects: list[str], trained_on: dict,
            results: list[dict]) -> dict:
    return {"command": " ".join(sys.argv), "machine": platform.platform(),
            "cpus": os.cpu_count(), "threads": args.threads,
            "sets": {"validation": list(VALIDATION_SET), "test": list(TEST_SET)},
            "subjects": {s: set_of(s) for s in subjects},
            "training_volumes": trained_on, "cases": results}


def summary_lines(results: list[dict]) -> list[str]:
    """Per set (validation, test, other), median and worst gain over cubic per method; cases
    whose volume a method's weights were trained on are left out (and counted)."""
    lines: list[str] = []
    for name_set in ("validation", "test", "other"):
        rows = [r for r in results if r.get("set", set_of(r["volume"])) == name_set]
        if not rows:
            continue
        volumes = ", ".join(dict.fromkeys(r["volume"] for r in rows))
        lines += [f"{SET_HEADERS[name_set]}: {volumes}; {len(rows)} cases",
                  "method        median gain   worst gain  worst case              "
                  "median SSIM-cubic SSIM   median s  left out"]
        for name in rows[0]["methods"]:
            kept = [r for r in rows if not r["methods"][name].get("seen_in_training")]
            seen = len(rows) - len(kept)
            out = f"{seen} seen in training" if seen else ""
            if not kept:
                lines.append(f"{name:<14} {'-':>9} {'-':>12}  {'-':<23} {'-':>22} {'-':>10}  "
                             f"{out}")
                continue
            gains = [r["methods"][name]["gain_db"] for r in kept]
            worst = kept[int(np.argmin(gains))]
            dssim = [r["methods"][name]["ssim"] - r["methods"]["cubic"]["ssim"] for r in kept]
            secs = [r["methods"][name]["seconds"] for r in kept]
            lines.append(f"{name:<14} {np.median(gains):+9.2f} {min(gains):+12.2f}  "
                         f"{worst['volume'] + ' ' + worst['case']:<23} "
                         f"{np.median(dssim):+22.4f} {np.median(secs):10.1f}  {out}".rstrip())
        lines.append("")
    return lines[:-1]


if __name__ == "__main__":
    raise SystemExit(main())
