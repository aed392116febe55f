"""Crash and resume: a participant run killed midway finishes on rerun, reusing what was done,
with outputs byte-identical to an uninterrupted run; outputs are readable by others."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import make_dataset, phantom_volume


def _without_timings(value):
    """Sidecar content minus wall-clock timings (``Seconds``, at any depth)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "Seconds" not in k}
    return value


def _app(bids: Path, out: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "bids_mrisr.cli.run", str(bids), str(out), "participant",
            "-w", str(work), "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1",
            "--seed", "7"]


def _sr_file(out: Path) -> Path:
    return out / "sub-01" / "anat" / "sub-01_res-1mm_desc-sr_T1w.nii.gz"


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    bids = make_dataset(tmp_path / "bids", {
        "sub-01/anat/sub-01_T1w.nii.gz": phantom_volume((96, 112, 40), seed=3)})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean = subprocess.run(_app(bids, tmp_path / "clean", tmp_path / "wclean"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr

    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen(_app(bids, out, work), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    n4_result = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            started_sr = list(work.glob("bids_mrisr_wf/*/*/superres_wf/superres/_inputs.pklz"))
            if started_sr:
                os.killpg(proc.pid, signal.SIGKILL)  # as a scheduler's hard kill would
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not _sr_file(out).exists()  # killed before its output: nothing half-visible
    assert not list(out.rglob(".*.nii*"))  # no temporary file of an interrupted write
    n4_result = next(work.glob("bids_mrisr_wf/*/*/preproc_wf/n4/result_n4.pklz"))
    n4_mtime = n4_result.stat().st_mtime_ns

    rerun = subprocess.run(_app(bids, out, work), env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert n4_result.stat().st_mtime_ns == n4_mtime  # the finished N4 node was reused
    assert _sr_file(out).read_bytes() == _sr_file(tmp_path / "clean").read_bytes()
    sidecars = [_without_timings(json.loads(
        p.with_name(p.name.replace(".nii.gz", ".json")).read_text()))
        for p in (_sr_file(out), _sr_file(tmp_path / "clean"))]
    assert sidecars[0] == sidecars[1]
    mode = stat.S_IMODE(_sr_file(out).stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # not mkstemp's 0600
    data = np.asanyarray(nib.load(str(_sr_file(out))).dataobj)
    assert np.isfinite(data).all()


_SR_PARTIAL = "bids_mrisr_wf/*/*/superres_wf/superres/partial/*/*.npz"
_RESUMED = re.compile(r"resumed an interrupted super-resolution: (\d+) of (\d+) slice batches")


def _interrupt_during_sr(command: list[str], work: Path, send) -> tuple[int, str, list[int]]:
    """Start the app, call ``send(pid)`` once the SR node has saved a finished batch; its exit
    code, its stderr, and the batches saved when the signal went out."""
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    saved = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            saved = list(work.glob(_SR_PARTIAL))
            if saved:
                send(proc.pid)
                break
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert saved, "the run ended before the SR node saved a batch"
    return proc.returncode, stderr, saved


def _assert_clean_interruption(stderr: str, out: Path, work: Path, signame: str) -> None:
    """One line says so; no traceback, crash file, report, output or temporary file."""
    assert "Traceback" not in stderr and "ForkProcess" not in stderr, stderr
    said = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(said) == 1 and signame in said[0], stderr
    assert "failed" not in stderr
    assert not list((work / "crash").glob("crash-*"))
    assert not list(out.glob("sub-*.html"))
    assert not list(out.rglob("*.nii*"))  # neither outputs nor temporaries of a write


def test_ctrl_c_during_sr_exits_130_and_the_rerun_resumes_its_batches(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the SR node runs in
    the main process (Linear): exit 130, one line; the rerun loads the batches that were done
    instead of computing them, and writes the same bytes as an uninterrupted run."""
    bids = make_dataset(tmp_path / "bids", {
        "sub-01/anat/sub-01_T1w.nii.gz": phantom_volume((96, 112, 40), seed=3)})
    clean = subprocess.run(_app(bids, tmp_path / "clean", tmp_path / "wclean"),
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr
    assert not _RESUMED.search(clean.stderr)

    out, work = tmp_path / "out", tmp_path / "work"
    code, stderr, saved = _interrupt_during_sr(
        _app(bids, out, work), work, lambda pid: os.killpg(pid, signal.SIGINT))
    assert code == 130, stderr
    _assert_clean_interruption(stderr, out, work, "SIGINT")

    rerun = subprocess.run(_app(bids, out, work), env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    resumed = _RESUMED.search(rerun.stderr)
    assert resumed, rerun.stderr
    reused, total = int(resumed.group(1)), int(resumed.group(2))
    assert len(saved) <= reused < total  # computed on the rerun: total - reused batches
    assert _sr_file(out).read_bytes() == _sr_file(tmp_path / "clean").read_bytes()
    assert not list(work.glob(_SR_PARTIAL))  # dropped once the outputs were written


def test_sigterm_to_a_parallel_run_exits_143_without_worker_tracebacks(tmp_path):
    """SIGTERM to the main process only (as ``kill PID`` or a scheduler sends it) while its
    MultiProc workers restore: exit 143, one line, the workers are stopped; the rerun
    finishes."""
    bids = make_dataset(tmp_path / "bids", {
        f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz": phantom_volume((96, 112, 40), seed=i)
        for i in (1, 2)})
    out, work = tmp_path / "out", tmp_path / "work"
    command = [*_app(bids, out, work)]
    command[command.index("--nprocs") + 1] = "2"
    workers: list[int] = []

    def terminate(pid: int) -> None:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        workers.extend(int(child) for child in children.read_text().split())
        os.kill(pid, signal.SIGTERM)

    code, stderr, _ = _interrupt_during_sr(command, work, terminate)
    assert code == 143, stderr
    _assert_clean_interruption(stderr, out, work, "SIGTERM")
    assert workers
    time.sleep(1)
    for pid in workers:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), f"worker {pid} lives on"

    rerun = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert _RESUMED.search(rerun.stderr), rerun.stderr


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns,
                                             stat.S_IMODE(p.stat().st_mode))
            for p in root.rglob("*")}


def test_read_only_dataset_and_an_impossible_home(tmp_path):
    """chmod -R a-w on the input, and a HOME that cannot exist (under a regular file), which
    stops root too: the run works, and the dataset is untouched to the nanosecond."""
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    for path in [*bids.rglob("*"), bids]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(bids)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(blocker / "home")}
    for name in ("MPLCONFIGDIR", "DENO_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env.pop(name, None)
    try:
        command = [a for a in _app(bids, tmp_path / "out", tmp_path / "work")
                   if a != "--skip-bids-validation"]  # the validator's Deno needs a cache too
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert _sr_file(tmp_path / "out").is_file()
        assert (tmp_path / "out" / "sub-01.html").is_file()  # matplotlib drew the figures
        assert _snapshot(bids) == before
    finally:
        for path in [bids, *bids.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
