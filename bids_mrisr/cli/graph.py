"""Running the nipype graph and reading its outcome: one status per run, crashes in one line.

Kept out of ``cli/participant.py`` (as fMRIPrep's ``cli/workflow.py``): the participant level
decides what to run and reports it; this module runs it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bids_mrisr.bids.derivatives import (
    output_name,
    parse_volume_name,
    run_volumes,
    subject_anat_dir,
    volume_desc,
)
from bids_mrisr.bids.layout import AnatRun
from bids_mrisr.cli.interrupted import run_workflow
from bids_mrisr.config import Settings

if TYPE_CHECKING:
    from bids_mrisr.sr.variants import VerifiedWeights

LOGGER = logging.getLogger("bids_mrisr")


@dataclass
class RunStatus:
    run: AnatRun
    status: str  # "ok", "bad data", "failed"
    detail: str = ""
    crash_file: Path | None = None
    restored: bool = True
    """False for an input already at the target resolution: resampled, nothing to restore."""


def _configure_nipype(settings: Settings) -> None:
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    crash_dir = settings.work_dir / "crash"
    crash_dir.mkdir(parents=True, exist_ok=True)
    # Node failures reach the user through the summary (one line each, with the crash file);
    # nipype's own tracebacks are shown only with -v.
    level = "DEBUG" if settings.verbose >= 2 else "INFO" if settings.verbose else "CRITICAL"
    nipype_config.update_config({
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
            "create_report": False,
            "check_version": False,
        },
        "logging": {"workflow_level": level, "interface_level": level, "utils_level": level,
                    "log_to_file": False},
        "monitoring": {"enabled": False},
    })
    nipype_logging.update_logging(nipype_config)


def _crash_messages(crash_dir: Path, since: float) -> dict[str, tuple[str, Path]]:
    """Map node full names to the last line of their traceback and the crash file."""
    messages: dict[str, tuple[str, Path]] = {}
    for crash in sorted(crash_dir.glob("crash-*.txt")):
        if crash.stat().st_mtime < since:
            continue
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, re.MULTILINE)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        last = errors[-1] if errors else (lines[-1] if lines else "unknown error")
        last = re.sub(r"^[\w.]*\.(\w+(Error|Exception))", r"\1", last)
        if node:
            messages[node.group(1)] = (last, crash)
    return messages


def expected_output(run: AnatRun, settings: Settings, resolution: float | None) -> Path | None:
    """The run's main volume on disk, super-resolved or resampled only (``--reports-only``
    without a work dir); at ``resolution`` when given, else the last found."""
    anat = subject_anat_dir(settings.output_dir, run.entities)
    if resolution:
        names = [anat / output_name(run.stem, resolution, volume_desc(kind), run.suffix)
                 for kind in (True, False)]
        return next((path for path in names if path.is_file()), names[0])
    matches = run_volumes(anat, run.stem, run.suffix)
    return matches[-1].path if matches else None


def execution_plugin(settings: Settings, parallel_jobs: int) -> tuple[str, dict]:
    """nipype plugin and its arguments: ``--use-plugin``'s, else Linear or MultiProc here."""
    local = {"n_procs": settings.resolved_nprocs(), "raise_insufficient": False}
    if settings.mem_gb:
        local["memory_gb"] = settings.mem_gb
    if settings.nipype_plugin is not None:
        args = dict(settings.nipype_plugin_args)
        if settings.nipype_plugin in ("MultiProc", "LegacyMultiProc"):
            args = {**local, **args}  # the file's values win over --nprocs/--mem
        return settings.nipype_plugin, args
    if parallel_jobs > 1:
        return "MultiProc", local
    return "Linear", {}


def _parallel_jobs(runs: list[AnatRun], settings: Settings) -> int:
    """Runs side by side: up to --nprocs, and no more than --mem holds at once (the jobs share
    it), so that every job's share still fits its grid in the smallest tiles."""
    jobs = min(settings.resolved_nprocs(), len(runs))
    if settings.mem_gb and jobs > 1:
        from bids_mrisr.bids.inputs import minimum_memory_gb

        need = max(minimum_memory_gb(run.path, settings.output_resolution) for run in runs)
        jobs = max(1, min(jobs, int(settings.mem_gb // need)))
    return jobs


def run_graph(runs: list[AnatRun], settings: Settings,
              weights: VerifiedWeights | None) -> list[RunStatus]:
    from bids_mrisr.workflows.base import init_bids_mrisr_wf

    _configure_nipype(settings)
    parallel_jobs = _parallel_jobs(runs, settings)
    workflow = init_bids_mrisr_wf(runs, settings, weights, parallel_jobs)
    started = time.time()
    plugin, plugin_args = execution_plugin(settings, parallel_jobs)
    LOGGER.info("processing %d run(s) with nipype %s (work dir %s)", len(runs), plugin,
                settings.work_dir)
    subjects = sorted({run.subject for run in runs})
    try:
        run_workflow(workflow, plugin, plugin_args, settings.work_dir / "crash", started - 1,
                     [settings.output_dir / f"sub-{subject}" for subject in subjects])
    except RuntimeError as err:  # nipype: "Workflow did not execute cleanly"
        LOGGER.debug("nipype: %s", err)
    crashes = _crash_messages(settings.work_dir / "crash", started - 1)
    statuses = []
    for run in runs:
        sr_file = written_sr_file(settings.work_dir, run, since=started - 1)
        run_crashes = [crash for node, crash in crashes.items() if f".{run.label}_wf." in node]
        if run_crashes:
            message, crash_file = run_crashes[0]
            statuses.append(RunStatus(run, "failed", message, crash_file))
        elif sr_file is not None and sr_file.is_file():
            detail = sr_file.relative_to(settings.output_dir).as_posix()
            volume = parse_volume_name(sr_file)
            statuses.append(RunStatus(run, "ok", detail,
                                      restored=volume is None or volume.restored))
        else:
            statuses.append(RunStatus(run, "failed", "no output was written (see the work dir)"))
    return statuses


def written_sr_file(work_dir: Path, run: AnatRun, since: float | None = None) -> Path | None:
    """The main volume the graph reports for ``run`` (super-resolved or resampled only): its
    writer node's outputs (written by this invocation when ``since`` is given), not a file name
    derived again."""
    from nipype.utils.filemanip import loadpkl

    from bids_mrisr.workflows.base import run_work_dir
    from bids_mrisr.workflows.outputs import SR_WRITER

    result = (run_work_dir(work_dir, run) / "outputs_wf" / SR_WRITER
              / f"result_{SR_WRITER}.pklz")
    if not result.is_file() or (since is not None and result.stat().st_mtime < since):
        return None
    try:
        outputs = loadpkl(result).outputs.out_files
    except Exception:  # noqa: BLE001  an unreadable result is a missing one
        return None
    volumes = [v.path for v in map(parse_volume_name, outputs or [])
               if v is not None and v.suffix == run.suffix]
    return volumes[0] if volumes else None
