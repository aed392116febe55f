"""Inference benchmark: student vs teacher on a whole-head 2 mm -> 1 mm volume.

Measures, in one process: an fp32 matmul peak (GFLOP/s), then for each model (random-init
checkpoints of the DEFAULT configs; speed does not depend on the weights) wall time, output
voxels/s, peak RSS, achieved GFLOP/s (FLOPs counted with FlopCounterMode on one slice per plane,
scaled) as a fraction of the matmul peak, and the student-over-teacher speed-up.

    python benchmarks/inference.py --student-steps 2 --teacher-steps 20 --teacher-slices 8
    python benchmarks/inference.py --quick           # cropped volume, smoke run
    python benchmarks/inference.py --app shipped=bids_mrisr/data/weights/student \
        campaign=scripts/campaign/out/student --repeats 3   # the whole app, as users run it

With ``--app LABEL=DIR`` the benchmark instead runs the installed app (participant level,
preprocessing included, fresh output and work folders each time) on the same 2 mm scan with
each student checkpoint, and reports the median wall time, the engine's own seconds (from the
sidecar) and the peak RSS of the app process.

With ``--teacher-slices K`` the teacher runs only K slices of each plane and its time is scaled
to the whole volume; the output then says "extrapolated from K slices".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bids_mrisr.sr import slicing
from bids_mrisr.sr.checkpoint import load_checkpoint, random_checkpoint
from bids_mrisr.sr.engine import SROptions
from bids_mrisr.sr.inference import run_model
from bids_mrisr.sr.networks.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ds-real"
VOLUME = "sub-xa30/anat/sub-xa30_acq-lowres_T1w.nii.gz"


def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each model gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def load_volume(quick: bool) -> tuple[np.ndarray, str]:
    import nibabel as nib
    from scipy import ndimage

    base = Path(os.environ.get("BIDS_MRISR_TEST_DATA", DEFAULT_DATA))
    path = base / VOLUME
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    zoom = [z / 1.0 for z in img.header.get_zooms()[:3]]
    up = ndimage.zoom(data, zoom, order=3).astype(np.float32)
    up /= max(float(np.percentile(up, 99.5)), 1e-6)
    if quick:
        c = [s // 2 for s in up.shape]
        up = np.ascontiguousarray(
            up[c[0] - 24 : c[0] + 24, c[1] - 24 : c[1] + 24, c[2] - 24 : c[2] + 24]
        )
    return up, str(path)


def flops_per_run(model, cfg: ModelConfig, shape, planes, steps: int, samples: int) -> float:
    """FLOPs of a full run: route once + ``steps`` denoiser calls, per slice, per plane."""
    total = 0.0
    m = cfg.context_slices
    for p in planes:
        axis = slicing.PLANE_AXES[p]
        hw = [s for i, s in enumerate(shape) if i != axis]
        cond = torch.rand(1, 2 * m + 1, *hw)
        x = torch.randn(1, 1, *hw)
        t = torch.full((1,), 500.0)
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                gates = model.route(cond)
            route = counter.get_total_flops()
            counter = FlopCounterMode(display=False)
            with counter:
                model(x, cond, t, gates=gates)
            step = counter.get_total_flops()
        total += shape[axis] * (route + steps * step) * samples
    return float(total)


def conv_kernel_gflops(model, cfg: ModelConfig, hw: tuple[int, int], batch: int = 8) -> float:
    """GFLOP/s inside the convolution kernels alone: conv FLOPs / conv self time (profiler).

    Separates how well the convolutions use the CPU from the memory-bound glue around them
    (norms, activations, concatenations), which the end-to-end figure mixes in.
    """
    from torch.profiler import ProfilerActivity, profile

    model = model.to(memory_format=torch.channels_last)
    cond = torch.rand(batch, cfg.in_condition_channels, *hw).contiguous(
        memory_format=torch.channels_last)
    x = torch.randn(batch, 1, *hw)
    t = torch.full((batch,), 500.0)
    with torch.inference_mode():
        gates = model.route(cond)
        model(x, cond, t, gates=gates)  # warm-up: oneDNN picks and caches kernels
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, cond, t, gates=gates)
        conv_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items()
                         if "convolution" in str(op))
        repeats = 3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x, cond, t, gates=gates)
    conv_us = sum(e.self_cpu_time_total for e in prof.key_averages()
                  if "convolution" in e.key)
    return conv_flops * repeats / (conv_us * 1e-6) / 1e9


def time_model(
    kind: str,
    vol: np.ndarray,
    steps: int,
    planes,
    slices: int | None,
    threads: int | None,
    tmp: Path,
) -> dict:
    cfg = ModelConfig.teacher_default() if kind == "teacher" else ModelConfig.student_default()
    ck = tmp / kind
    random_checkpoint(ck, cfg, seed=0)
    model = load_checkpoint(ck, "cpu").model
    n_params = sum(p.numel() for p in model.parameters())
    flops = flops_per_run(model, cfg, vol.shape, planes, steps, 1)
    conv_gflops = conv_kernel_gflops(model, cfg, (vol.shape[1], vol.shape[2]))
    del model
    reset_peak_rss()
    seconds = 0.0
    info = {}
    if slices is None:
        opts = SROptions(
            method=kind,
            weights=ck,
            device="cpu",
            steps=steps,
            planes=tuple(planes),
            threads=threads,
        )
        t0 = time.perf_counter()
        res = run_model(vol, opts)
        seconds = time.perf_counter() - t0
        info = res.info
        assert np.isfinite(res.image).all()
        del res
    else:  # K slices of each plane, time scaled by (slices in plane) / K
        for p in planes:
            axis = slicing.PLANE_AXES[p]
            n = vol.shape[axis]
            k = min(slices, n)
            start = n // 2 - k // 2
            slab = np.ascontiguousarray(np.take(vol, range(start, start + k), axis=axis))
            opts = SROptions(
                method=kind, weights=ck, device="cpu", steps=steps, planes=(p,), threads=threads
            )
            t0 = time.perf_counter()
            res = run_model(slab, opts)
            seconds += (time.perf_counter() - t0) * n / k
            info = res.info
            del res
    voxels = int(np.prod(vol.shape))
    return {
        "model": kind,
        "parameters": n_params,
        "steps": steps,
        "planes": list(planes),
        "seconds": seconds,
        "extrapolated_from_slices": slices,
        "voxels_per_second": voxels / seconds,
        "peak_rss_gb": peak_rss_gb(),
        "flops": flops,
        "achieved_gflops": flops / seconds / 1e9,
        "conv_kernel_gflops": conv_gflops,
        "peak_rss_scope": "whole volume" if slices is None else f"{slices}-slice slabs only",
        "batch_size": info.get("BatchSize"),
        "threads": info.get("Threads"),
    }


def app_run(weights: Path, threads: int, tmp: Path) -> dict:
    """One participant-level run of the installed app on the 2 mm scan: wall seconds, the
    engine's seconds and the peak RSS of the app process (its own, read from wait4)."""
    import shutil
    import subprocess

    base = Path(os.environ.get("BIDS_MRISR_TEST_DATA", DEFAULT_DATA))
    subject = VOLUME.split("/", 1)[0]
    bids = tmp / "bids"
    if not bids.exists():
        shutil.copytree(base / subject, bids / subject)
        shutil.copy(base / "dataset_description.json", bids)
    out, work = tmp / "out", tmp / "work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "bids_mrisr.cli.run", str(bids), str(out), "participant",
           "--model", "student", "--weights", str(weights), "-w", str(work),
           "--skip-bids-validation", "--omp-nthreads", str(threads), "--nprocs", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    sidecar = next(out.glob(f"{subject}/anat/*_desc-sr_*.json"))
    info = json.loads(sidecar.read_text()).get("SuperResolution", {})
    return {"seconds": seconds, "engine_seconds": info.get("Seconds"),
            "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def app_timings(specs: list[str], threads: int, repeats: int) -> list[dict]:
    """Median over ``repeats`` app runs per checkpoint, the checkpoints interleaved so that a
    noisy neighbour hurts them alike."""
    labelled = [spec.split("=", 1) for spec in specs]
    runs: dict[str, list[dict]] = {label: [] for label, _ in labelled}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for label, directory in labelled:
                runs[label].append(app_run(Path(directory).resolve(), threads, Path(tmp)))
    rows = []
    for label, directory in labelled:
        manifest = json.loads((Path(directory) / "model.json").read_text())
        model = load_checkpoint(Path(directory), "cpu").model
        rows.append({
            "label": label, "weights": directory,
            "parameters": sum(p.numel() for p in model.parameters()),
            "base_width": manifest["config"].get("base_width"),
            "repeats": repeats,
            "seconds": statistics.median(r["seconds"] for r in runs[label]),
            "engine_seconds": statistics.median(r["engine_seconds"] for r in runs[label]),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs[label]),
            "runs": runs[label]})
    return rows


def print_app_table(result: dict) -> None:
    print(f"whole app on {result['volume']} (2 mm -> 1 mm), {result['threads']} threads, "
          f"median of {result['models'][0]['repeats']}")
    print(f"{'label':12} {'params':>9} {'width':>5} {'app s':>7} {'engine s':>8} {'RSS GB':>7} "
          f"{'vs first':>8}")
    first = result["models"][0]["seconds"]
    for r in result["models"]:
        print(f"{r['label']:12} {r['parameters']:>9} {r['base_width']!s:>5} "
              f"{r['seconds']:>7.1f} {r['engine_seconds']:>8.1f} {r['peak_rss_gb']:>7.2f} "
              f"{r['seconds'] / first:>7.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=20)
    ap.add_argument("--student-steps", type=int, default=2)
    ap.add_argument(
        "--planes",
        nargs="+",
        default=["axial", "coronal", "sagittal"],
        choices=sorted(slicing.PLANE_AXES),
    )
    ap.add_argument(
        "--teacher-slices",
        type=int,
        default=None,
        help="time only K slices per plane for the teacher and extrapolate",
    )
    ap.add_argument("--student-slices", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="48^3 crop, smoke run")
    ap.add_argument("--skip-teacher", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference.json")
    ap.add_argument("--app", nargs="+", metavar="LABEL=DIR", default=None,
                    help="time the whole app (preprocessing included) with these student "
                         "checkpoints instead of the engine alone")
    ap.add_argument("--repeats", type=int, default=3, help="app runs per checkpoint (--app)")
    args = ap.parse_args(argv)
    if args.app:
        threads = args.threads or 2
        result = {"benchmark": "inference-app", "volume": VOLUME, "threads": threads,
                  "torch": torch.__version__, "cpus": os.cpu_count(),
                  "cpu": platform.processor() or platform.machine(),
                  "load_average_before": os.getloadavg(),
                  "models": app_timings(args.app, threads, args.repeats)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_app_table(result)
        print(f"wrote {args.out}")
        return 0

    peak = matmul_peak()
    vol, src = load_volume(args.quick)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(
            time_model(
                "student",
                vol,
                args.student_steps,
                args.planes,
                args.student_slices,
                args.threads,
                Path(tmp),
            )
        )
        if not args.skip_teacher:
            rows.append(
                time_model(
                    "teacher",
                    vol,
                    args.teacher_steps,
                    args.planes,
                    args.teacher_slices,
                    args.threads,
                    Path(tmp),
                )
            )
    for r in rows:
        r["fraction_of_matmul_peak"] = r["achieved_gflops"] / peak
        r["conv_fraction_of_matmul_peak"] = r["conv_kernel_gflops"] / peak
    result = {
        "benchmark": "inference",
        "volume": src,
        "shape": list(vol.shape),
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "matmul_peak_gflops": peak,
        "models": rows,
    }
    if len(rows) == 2:
        result["student_speedup"] = rows[1]["seconds"] / rows[0]["seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"volume {src} -> {vol.shape} ({'quick crop' if args.quick else 'whole head'}), "
        f"matmul peak {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads"
    )
    print(
        f"{'model':8} {'params':>9} {'steps':>5} {'seconds':>9} {'Mvox/s':>8} {'RSS GB':>7} "
        f"{'GFLOP/s':>8} {'%peak':>6} {'conv%':>6}  note"
    )
    for r in rows:
        note = (
            f"extrapolated from {r['extrapolated_from_slices']} slices per plane (RSS: slabs)"
            if r["extrapolated_from_slices"]
            else "measured"
        )
        print(
            f"{r['model']:8} {r['parameters']:>9} {r['steps']:>5} {r['seconds']:>9.1f} "
            f"{r['voxels_per_second'] / 1e6:>8.3f} {r['peak_rss_gb']:>7.2f} "
            f"{r['achieved_gflops']:>8.1f} {100 * r['fraction_of_matmul_peak']:>5.1f}% "
            f"{100 * r['conv_fraction_of_matmul_peak']:>5.1f}%  {note}"
        )
    if "student_speedup" in result:
        print(f"student speed-up over teacher: {result['student_speedup']:.1f}x")
    print("GFLOP/s and %peak: whole run (every op); conv%: inside the convolution kernels only")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
