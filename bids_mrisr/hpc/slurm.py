"""SLURM job-array scripts: one participant per array task, the cluster's own scheduler.

The app itself stays a one-node program (nipype's MultiProc inside a job); scale-out is a job
array whose task ``i`` runs participant ``i`` of a list fixed when the script is written, and a
group-level job that waits for the array (``--dependency=afterany``). Rendering is pure so that
it is tested without a cluster.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

RUNTIMES = ("venv", "apptainer")

CONTAINER_BIDS = "/data"
CONTAINER_OUT = "/out"
CONTAINER_WORK = "/work"


@dataclass(frozen=True)
class ArrayJob:
    """Everything an array script needs; paths are absolute on the cluster's file system."""

    bids_dir: Path
    output_dir: Path
    participants: tuple[str, ...]
    runtime: str = "venv"
    """``venv``: run ``<prefix>/bin/bids_mrisr``; ``apptainer``: ``apptainer run`` an image."""
    prefix: Path | None = None
    """The virtual environment (venv) or the ``.sif`` image (apptainer)."""
    work_root: str = "${SLURM_TMPDIR:-/tmp}"
    """Where each task's work dir goes (node-local scratch by default; kept per participant)."""
    cpus: int = 4
    mem_gb: float = 16.0
    time: str = "04:00:00"
    gpus: int = 0
    partition: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    job_name: str = "bids_mrisr"
    log_dir: Path = Path("logs")
    """SLURM opens the ``--output`` file before the script runs and does not create folders:
    the generator creates this one when it writes the script."""
    app_args: tuple[str, ...] = field(default_factory=tuple)
    """Further options for every participant call (e.g. ``--model student``)."""

    def __post_init__(self) -> None:
        if not self.participants:
            raise ValueError("an array job needs at least one participant")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {self.runtime!r}")
        if self.runtime == "apptainer" and self.prefix is None:
            raise ValueError("the apptainer runtime needs the image (.sif) path")


APP_MEMORY_SHARE = 0.85
"""The app plans its tiles for this share of the task's allocation: Python, torch and nipype
need headroom beyond the arrays it plans, and SLURM kills a task at its limit."""


def _sbatch_header(job: ArrayJob, name: str, array: str | None, cpus: int,
                   mem_gb: float, gpus: int) -> list[str]:
    logs = job.log_dir
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    if array is not None:
        lines.append(f"#SBATCH --array={array}")
        lines.append(f"#SBATCH --output={logs}/%x_%A_%a.log")
    else:
        lines.append(f"#SBATCH --output={logs}/%x_%j.log")
    lines += [f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --mem={int(mem_gb * 1024)}M",
              f"#SBATCH --time={job.time}"]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    return lines


def _command(job: ArrayJob, level: str, options: list[str], gpus: int) -> str:
    """The app call for one task, as a bash line (paths quoted, variables left to bash)."""
    q = shlex.quote
    extra = " ".join(q(a) for a in job.app_args)
    if job.runtime == "venv":
        exe = q(str(Path(job.prefix) / "bin" / "bids_mrisr")) if job.prefix else "bids_mrisr"
        parts = [exe, '"$BIDS_DIR"', '"$OUT_DIR"', level, "-w", '"$WORK_DIR"', *options]
    else:
        nv = " --nv" if gpus else ""
        parts = [f"apptainer run --cleanenv{nv}",
                 f'-B "$BIDS_DIR":{CONTAINER_BIDS}:ro', f'-B "$OUT_DIR":{CONTAINER_OUT}',
                 f'-B "$WORK_DIR":{CONTAINER_WORK}', q(str(job.prefix)),
                 CONTAINER_BIDS, CONTAINER_OUT, level, "-w", CONTAINER_WORK, *options]
    return " ".join(parts) + (f" {extra}" if extra else "")


def _preamble(job: ArrayJob) -> list[str]:
    return [
        "set -euo pipefail",
        f"BIDS_DIR={shlex.quote(str(job.bids_dir))}",
        f"OUT_DIR={shlex.quote(str(job.output_dir))}",
        'mkdir -p "$OUT_DIR"',
    ]


def render_array_script(job: ArrayJob) -> str:
    """The participant-level array: task i processes participant i of the embedded list."""
    n = len(job.participants)
    array = f"0-{n - 1}" + (f"%{job.max_parallel}" if job.max_parallel else "")
    lines = _sbatch_header(job, job.job_name, array, job.cpus, job.mem_gb, job.gpus)
    lines += [
        f"# Written by `bids_mrisr slurm` for {n} participant(s) of {job.bids_dir}.",
        "# Submit with: sbatch THIS_FILE (the group script waits for it; see its header).",
        *_preamble(job),
        "PARTICIPANTS=(" + " ".join(shlex.quote(p) for p in job.participants) + ")",
        'TASK="${SLURM_ARRAY_TASK_ID:?run this script with sbatch (or set SLURM_ARRAY_TASK_ID)}"',
        'if (( TASK >= ${#PARTICIPANTS[@]} )); then',
        '  echo "array task $TASK: only ${#PARTICIPANTS[@]} participants in this script" >&2',
        "  exit 64",
        "fi",
        'LABEL="${PARTICIPANTS[$TASK]}"',
        # A participant's work dir survives a requeue on the same scratch (the graph resumes).
        f'WORK_DIR="{job.work_root}/bids_mrisr_work/sub-$LABEL"',
        'mkdir -p "$WORK_DIR"',
        # One participant per task: threads and memory are the task's own allocation.
        'CPUS="${SLURM_CPUS_PER_TASK:-' + str(job.cpus) + '}"',
        'echo "bids_mrisr: sub-$LABEL (array task $TASK) on $(hostname), $CPUS CPUs"',
        _command(job, "participant", ['--participant-label "$LABEL"', '--nprocs "$CPUS"',
                                      f"--mem {job.mem_gb * APP_MEMORY_SHARE:.1f}G"],
                 job.gpus),
        "",
    ]
    return "\n".join(lines)


def render_group_script(job: ArrayJob) -> str:
    """The group level: one small job, submitted to wait for the whole array."""
    lines = _sbatch_header(job, f"{job.job_name}_group", None, 1, 4.0, 0)
    lines += [
        "# Written by `bids_mrisr slurm`: the group report and summary of all participants.",
        "# Submit after the array: sbatch --dependency=afterany:ARRAY_JOB_ID THIS_FILE",
        *_preamble(job),
        f'WORK_DIR="{job.work_root}/bids_mrisr_work/group"',
        'mkdir -p "$WORK_DIR"',
        _command(job, "group", [], gpus=0),
        "",
    ]
    return "\n".join(lines)


def submit_commands(array_script: Path, group_script: Path) -> str:
    """The two sbatch calls, chained so that the group job waits for every array task."""
    a, g = shlex.quote(str(array_script)), shlex.quote(str(group_script))
    return (f"jobid=$(sbatch --parsable {a}) && "
            f"sbatch --dependency=afterany:${{jobid%%;*}} {g}")
