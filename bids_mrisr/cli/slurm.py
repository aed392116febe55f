"""``bids_mrisr slurm``: write a ready SLURM job array (one participant per task) for a dataset.

The participants are listed from the dataset with pybids when the script is written, so that
array task ``i`` always means the same subject, even if the dataset grows later. Further app
options follow ``--`` and are checked with the app's own parser now, not on the cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bids_mrisr.bids.layout import discover_runs
from bids_mrisr.cli.parser import (
    UsageParser,
    _mem_gb,
    _positive_int,
    expand_labels,
    is_within,
    resolved_path,
)
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.hpc.slurm import ArrayJob, render_array_script, render_group_script, submit_commands
from bids_mrisr.runtime.atomic import atomic_write

LOGGER = logging.getLogger("bids_mrisr")

OWNED_OPTIONS = ("--participant-label", "--participant_label", "-w", "--work-dir", "--nprocs",
                 "--n-cpus", "--mem", "--mem-gb")
"""App options the array script sets per task itself."""


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="bids_mrisr slurm",
        description="Write a SLURM job array (one participant per array task) and a group job "
                    "that waits for it. App options for every task follow '--', e.g. "
                    "'-- --model student --device cuda'.",
    )
    parser.add_argument("bids_dir", type=resolved_path, help="the input BIDS dataset")
    parser.add_argument("output_dir", type=resolved_path,
                        help="where the tasks write the derivatives")
    parser.add_argument("--participant-label", "--participant_label", nargs="+",
                        dest="participant_labels", help="only these subjects (default: all "
                        "with T1w/T2w runs)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--image", type=resolved_path,
                       help="run this Apptainer/Singularity image (.sif) with "
                            "'apptainer run --cleanenv'")
    where.add_argument("--venv", type=resolved_path,
                       help="run bids_mrisr from this virtual environment (default: the one "
                            "running this command)")
    parser.add_argument("--cpus", type=_positive_int, default=4, help="CPUs per task (default 4)")
    parser.add_argument("--mem", type=_mem_gb, default=16.0, dest="mem_gb",
                        help="memory per task, e.g. 16G (default 16G)")
    parser.add_argument("--time", default="04:00:00", help="time limit per task (default 4 h)")
    parser.add_argument("--gpus", type=int, default=0, choices=(0, 1),
                        help="GPUs per task (adds --gres=gpu:1 and apptainer's --nv)")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--max-parallel", type=_positive_int,
                        help="run at most this many tasks at once (the array's %%N)")
    parser.add_argument("--work-root", default="${SLURM_TMPDIR:-/tmp}",
                        help="where task work dirs go; may use shell variables of the node "
                             "(default: ${SLURM_TMPDIR:-/tmp})")
    parser.add_argument("--script-dir", type=resolved_path, default=Path("."),
                        help="where the two scripts and the logs/ folder of the tasks are "
                             "written (default: here)")
    parser.add_argument("--job-name", default="bids_mrisr",
                        help="SLURM job name of the array and the group job (default: "
                             "bids_mrisr)")
    return parser


def _split_app_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _check_app_args(app_args: list[str], bids_dir: Path, output_dir: Path) -> None:
    """Parse the per-task options with the app's own parser now, not hours later on a node."""
    from bids_mrisr.cli.parser import build_parser as app_parser

    owned = [a for a in app_args if a.split("=")[0] in OWNED_OPTIONS]
    if owned:
        raise UserError(f"after '--': {' '.join(owned)} is set per task by the script; use "
                        "bids_mrisr slurm's own options instead", ExitCode.USAGE)
    app_parser().parse_args([str(bids_dir), str(output_dir), "participant", *app_args])


def _runtime(args: argparse.Namespace) -> tuple[str, Path]:
    if args.image is not None:
        image = args.image.expanduser().absolute()
        if not image.is_file():
            raise UserError(f"--image {image}: no such file (build it first, see "
                            "docs/containers.md)", ExitCode.NO_INPUT)
        return "apptainer", image
    venv = (args.venv or Path(sys.prefix)).expanduser().absolute()
    if not (venv / "bin" / "bids_mrisr").is_file():
        raise UserError(f"--venv {venv}: no bin/bids_mrisr in it (install bids_mrisr there)",
                        ExitCode.NO_INPUT)
    return "venv", venv


def main(argv: list[str]) -> int:
    own, app_args = _split_app_args(argv)
    args = build_parser().parse_args(own)
    bids_dir = args.bids_dir.expanduser().absolute()
    output_dir = args.output_dir.expanduser().absolute()
    if is_within(output_dir, bids_dir):
        raise UserError(f"{output_dir}: inside the input dataset; choose another folder",
                        ExitCode.USAGE)
    _check_app_args(app_args, bids_dir, output_dir)
    runtime, prefix = _runtime(args)
    labels = expand_labels(args.participant_labels, "sub-")
    runs = discover_runs(bids_dir, labels)
    script_dir = args.script_dir.expanduser().absolute()
    participants = tuple(sorted({run.subject for run in runs}))
    job = ArrayJob(bids_dir=bids_dir, output_dir=output_dir, participants=participants,
                   runtime=runtime, prefix=prefix, work_root=args.work_root, cpus=args.cpus,
                   mem_gb=args.mem_gb, time=args.time, gpus=args.gpus,
                   partition=args.partition, account=args.account,
                   max_parallel=args.max_parallel, job_name=args.job_name,
                   app_args=tuple(app_args), log_dir=script_dir / "logs")
    try:
        job.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--script-dir {script_dir}: cannot create {job.log_dir} "
                        f"({exc.strerror})",
                        ExitCode.CANT_CREATE) from None
    array_script = script_dir / f"{args.job_name}_array.sbatch"
    group_script = script_dir / f"{args.job_name}_group.sbatch"
    for path, text in ((array_script, render_array_script(job)),
                       (group_script, render_group_script(job))):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text))
        path.chmod(0o755)
    LOGGER.info("wrote %s (%d array task(s): %s) and %s", array_script, len(participants),
                " ".join(participants), group_script)
    print(submit_commands(array_script, group_script))
    return int(ExitCode.OK)
