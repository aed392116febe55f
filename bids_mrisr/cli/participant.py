"""The participant level: validate, discover, check inputs, run the graph, report every run."""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bids_mrisr import __version__
from bids_mrisr.bids.derivatives import LOG_DIRNAME, init_derivatives_dataset
from bids_mrisr.bids.inputs import NotEnoughMemory, input_problem, input_warnings
from bids_mrisr.bids.layout import (
    AnatRun,
    check_dataset_description,
    discover_runs,
    output_name_clashes,
)
from bids_mrisr.bids.locks import SubjectLock, SubjectLockedError
from bids_mrisr.bids.validator import ValidatorUnavailableError, validation_errors
from bids_mrisr.cli.graph import RunStatus, run_graph
from bids_mrisr.config import Settings
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.runtime.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from bids_mrisr.sr.variants import VerifiedWeights

LOGGER = logging.getLogger("bids_mrisr")


def validate_input_dataset(settings: Settings) -> None:
    check_dataset_description(settings.bids_dir)
    if settings.skip_bids_validation:
        LOGGER.info("skipping BIDS validation (--skip-bids-validation)")
        return
    try:
        errors = validation_errors(settings.bids_dir)
    except ValidatorUnavailableError as err:
        raise UserError(str(err), ExitCode.FAILURE) from None
    if errors:
        shown = "; ".join(issue.one_line() for issue in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise UserError(
            f"{settings.bids_dir}: not valid BIDS: {shown}{more}; fix the dataset or pass "
            "--skip-bids-validation",
            ExitCode.INVALID_BIDS,
        )
    LOGGER.info("BIDS validation passed: %s", settings.bids_dir)


def resolve_weights(settings: Settings) -> VerifiedWeights | None:
    """Check the checkpoint and its variants up front, so a bad --weights fails before any
    work starts; the engine then hashes nothing again (None: ``--model interp``)."""
    if settings.model == "interp":
        return None
    from bids_mrisr.sr.device import resolve_device
    from bids_mrisr.sr.engine import SRError
    from bids_mrisr.sr.weights import default_weights

    try:  # before any preprocessing: a missing GPU is a usage error, not a per-run failure
        resolve_device(settings.device)
    except SRError as err:
        raise UserError(f"--device: {err}", ExitCode.USAGE) from None

    weights = settings.weights or default_weights(settings.model)
    if weights is None:
        raise UserError(
            f"no trained weights are available for the {settings.model} model yet; pass "
            "--weights DIR pointing at a bids_mrisr checkpoint, or use --model interp",
            ExitCode.USAGE,
        )
    from bids_mrisr.sr.variants import verify_with_variants

    try:
        verified = verify_with_variants(weights)
    except SRError as err:
        raise UserError(str(err), ExitCode.USAGE) from None
    if verified.config.kind != settings.model:
        raise UserError(
            f"{weights}: is a {verified.config.kind} checkpoint but --model {settings.model} "
            "was requested", ExitCode.USAGE)
    if settings.adapt == "auto" and verified.config.prediction_type != "mean":
        raise UserError(f"{weights}: --adapt auto needs a posterior-mean regressor checkpoint "
                        "(the shipped student); this one is a diffusion model", ExitCode.USAGE)
    return verified


def print_summary(statuses: list[RunStatus]) -> None:
    width = max([len(s.run.relpath) for s in statuses] + [5])
    lines = ["", "Summary", f"{'input':<{width}}  {'status':<8}  detail",
             f"{'-' * width}  {'-' * 8}  {'-' * 40}"]
    lines += [f"{s.run.relpath:<{width}}  {s.status:<8}  {s.detail}"
              + ("" if s.restored else "  (already at the target resolution: resampled only)")
              for s in statuses]
    ok = sum(s.status == "ok" and s.restored for s in statuses)
    resampled = sum(s.status == "ok" and not s.restored for s in statuses)
    lines.append(f"{ok} of {len(statuses)} run(s) super-resolved"
                 + (f"; {resampled} already at the target resolution (resampled only)"
                    if resampled else ""))
    print("\n".join(lines), flush=True)


def write_subject_logs(statuses: list[RunStatus], settings: Settings,
                       command_line: list[str]) -> None:
    """A per-subject log under ``sub-<label>/log/<timestamp>/``, as NiPreps apps do."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    subjects = sorted({s.run.subject for s in statuses})
    for subject in subjects:
        lines = [
            f"bids_mrisr {__version__}",
            f"date: {datetime.now().isoformat(timespec='seconds')}",
            f"command: {' '.join(command_line)}",
            f"bids_dir: {settings.bids_dir}",
            f"work_dir: {settings.work_dir}",
            f"model: {settings.model}  device: {settings.device}  seed: {settings.seed}  "
            f"steps: {settings.steps}  num_samples: {settings.num_samples}",
            "",
        ]
        lines += [f"{s.run.relpath}\t{s.status}\t{s.detail}"
                  + (f"\tcrash file: {s.crash_file}" if s.crash_file else "")
                  for s in statuses if s.run.subject == subject]
        log_file = (settings.output_dir / f"sub-{subject}" / LOG_DIRNAME / stamp /
                    "bids_mrisr.log")
        atomic_write_bytes(log_file, ("\n".join(lines) + "\n").encode())


def write_reports(statuses: list[RunStatus], settings: Settings,
                  command_line: list[str]) -> None:
    """``OUT/sub-<label>.html`` per subject; a figure that fails costs a warning, not the run."""
    from bids_mrisr.reports.html import RunReport, build_run_figures, write_subject_report

    for subject in sorted({s.run.subject for s in statuses}):
        entries = []
        for status in (s for s in statuses if s.run.subject == subject):
            if status.status != "ok":
                entries.append(RunReport(status.run.relpath, status.status, status.detail))
                continue
            sr_file = settings.output_dir / status.detail
            stem = f"{status.run.stem}_{status.run.suffix}"
            try:
                entries.append(build_run_figures(settings.output_dir, status.run.path, sr_file,
                                                 stem))
            except Exception as err:  # noqa: BLE001  a figure must never cost the run
                LOGGER.warning("%s: report figures failed (%s: %s)", status.run.relpath,
                               type(err).__name__, err)
                entries.append(RunReport(status.run.relpath, "ok", "figures failed"))
        path = write_subject_report(settings.output_dir, subject, entries, settings.model,
                                    " ".join(command_line))
        LOGGER.info("report: %s", path)


def rebuild_reports(runs: list[AnatRun], settings: Settings,
                    command_line: list[str]) -> ExitCode:
    """``--reports-only``: the reports of the runs that already have outputs, nothing else."""
    from bids_mrisr.bids.derivatives import parse_volume_name
    from bids_mrisr.cli.graph import expected_output, written_sr_file

    statuses = []
    for run in runs:
        # what the graph recorded; the file-name rule only when the work dir is gone
        found = (written_sr_file(settings.work_dir, run)
                 or expected_output(run, settings, settings.output_resolution))
        if found is not None and found.is_file():
            detail = found.relative_to(settings.output_dir).as_posix()
            volume = parse_volume_name(found)
            statuses.append(RunStatus(run, "ok", detail,
                                      restored=volume is None or volume.restored))
        else:
            statuses.append(RunStatus(run, "missing", "no output yet: run the participant level"))
    if not any(s.status == "ok" for s in statuses):
        raise UserError(f"{settings.output_dir}: no outputs to report on; run the participant "
                        "level first", ExitCode.NO_INPUT)
    write_reports(statuses, settings, command_line)
    return ExitCode.OK


def clean_finished_runs(statuses: list[RunStatus], work_dir: Path) -> None:
    """``--clean-workdir``: drop the intermediates of runs whose outputs are written."""
    import shutil

    from bids_mrisr.workflows.base import run_work_dir

    freed = 0
    for status in (s for s in statuses if s.status == "ok"):
        folder = run_work_dir(work_dir, status.run)
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    LOGGER.info("--clean-workdir: removed %.1f MB of finished runs' intermediates from %s",
                freed / 1e6, work_dir)


def _lock_subjects(output_dir: Path, subjects: set[str],
                   ) -> tuple[list[SubjectLock], dict[str, str]]:
    """Lock every subject this run writes; a subject another run holds is left to it."""
    locks, busy = [], {}
    for subject in sorted(subjects):
        lock = SubjectLock(output_dir, subject)
        try:
            lock.acquire()
        except SubjectLockedError as err:
            LOGGER.error("sub-%s: %s", subject, err)
            busy[subject] = str(err)
            continue
        locks.append(lock)
    return locks, busy


_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def _output_error(err: OSError, fallback: Path) -> UserError:
    """Say in words why the output could not be made: 73 (cannot create) or 74 (I/O)."""
    where = err.filename or fallback
    if err.errno in _IO_ERRNOS:
        return UserError(f"{where}: {err.strerror}", ExitCode.IO_ERROR)
    hint = {errno.ENOTDIR: "; a file is in the way on that path",
            errno.EEXIST: "; a file of that name is in the way",
            errno.EROFS: "; choose a writable output directory",
            errno.EACCES: "; choose a folder you can write to"}.get(err.errno or 0, "")
    return UserError(f"{where}: cannot create it ({err.strerror}{hint})", ExitCode.CANT_CREATE)


RESOURCE = "memory"
"""Status of a run whose grid cannot fit the memory it may use, even in the smallest tiles."""


def _nothing_usable(statuses: list[RunStatus]) -> UserError:
    """Every run was refused: a resource problem (exit 71) when more memory would let one run,
    else bad data (65)."""
    short = sum(status.status == RESOURCE for status in statuses)
    if not short:
        return UserError("no usable input: every selected run is bad data", ExitCode.BAD_DATA)
    return UserError(f"no usable input: {short} of {len(statuses)} selected run(s) need more "
                     "memory than allowed (see above), the others are bad data" if short <
                     len(statuses) else "no usable input: every selected run needs more memory "
                     "than allowed (see above)", ExitCode.NOT_ENOUGH_MEMORY)


def run_participant(settings: Settings, command_line: list[str]) -> ExitCode:
    validate_input_dataset(settings)
    runs = discover_runs(settings.bids_dir, settings.participant_labels, settings.session_labels,
                         settings.bids_filters)
    LOGGER.info("found %d T1w/T2w run(s) in %d subject(s)", len(runs),
                len({run.subject for run in runs}))
    if settings.reports_only:
        return rebuild_reports(runs, settings, command_line)
    weights = resolve_weights(settings)

    statuses: list[RunStatus] = []
    good: list[AnatRun] = []
    clashes = output_name_clashes(runs)
    for run in runs:
        problem = clashes.get(run.relpath) or input_problem(
            run.path, settings.output_resolution, settings.mem_gb)
        if problem:
            LOGGER.error("%s: %s", run.path, problem)
            statuses.append(RunStatus(run, RESOURCE if isinstance(problem, NotEnoughMemory)
                                      else "bad data", problem))
        else:
            for warning in input_warnings(run.path):
                LOGGER.warning("%s: %s", run.path, warning)
            good.append(run)
    if not good and len(statuses) == len(runs):
        print_summary(statuses)
        raise _nothing_usable(statuses)

    try:
        init_derivatives_dataset(settings.output_dir, settings.bids_dir)
        settings.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(err, settings.output_dir) from None

    if settings.omp_nthreads:
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.omp_nthreads))
    locks, busy = _lock_subjects(settings.output_dir, {run.subject for run in runs})
    try:
        statuses = [s for s in statuses if s.run.subject not in busy]
        statuses += run_graph([r for r in good if r.subject not in busy], settings, weights)
        statuses.sort(key=lambda status: status.run.relpath)
        write_subject_logs(statuses, settings, command_line)
        write_reports(statuses, settings, command_line)
        if settings.clean_workdir:
            clean_finished_runs(statuses, settings.work_dir)
    finally:
        for lock in locks:
            lock.release()
    statuses += [RunStatus(run, "failed", busy[run.subject]) for run in runs
                 if run.subject in busy]
    statuses.sort(key=lambda status: status.run.relpath)
    print_summary(statuses)
    failed = [s for s in statuses if s.status != "ok"]
    for status in failed:
        if status.status == "failed":
            where = f" (details: {status.crash_file})" if status.crash_file else ""
            LOGGER.error("%s: %s%s", status.run.path, status.detail, where)
    return ExitCode.FAILURE if failed else ExitCode.OK
