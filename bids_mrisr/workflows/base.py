"""The top-level graph: one sub-workflow per subject, one branch per anatomical run.

Settings are read here, once, and handed to the builders below as plain arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.bids.inputs import (
    SLICE_SELECTIVE,
    load_header,
    looks_skull_stripped,
    slice_profile_from_metadata,
)
from bids_mrisr.bids.layout import AnatRun
from bids_mrisr.config import Settings
from bids_mrisr.image.reorient import ras_zooms
from bids_mrisr.image.resample import default_resolution
from bids_mrisr.sr.geometry import MIN_ANISOTROPY, anisotropy, blurred_axes
from bids_mrisr.sr.options import UNKNOWN, SROptions
from bids_mrisr.workflows.outputs import init_outputs_wf
from bids_mrisr.workflows.preproc import init_preproc_wf
from bids_mrisr.workflows.superres import init_superres_wf

if TYPE_CHECKING:
    from bids_mrisr.sr.variants import VerifiedWeights

LOGGER = logging.getLogger("bids_mrisr")


def sr_options(settings: Settings, weights: VerifiedWeights | None, threads: int,
               parallel_jobs: int = 1) -> SROptions:
    """The engine's settings, built once from the command line's: the only place where CLI
    names (``--model``, ``--mem``, ``--omp-nthreads``) become engine names. Threads and the
    memory budget are this job's share of the machine; ``weights`` were verified up front, and
    their digests travel with the options so that the engine hashes nothing again."""
    return SROptions(
        method=settings.model,
        weights=weights.path if weights is not None else None,
        weights_sha256=weights.digests if weights is not None else (),
        device=settings.device,
        seed=settings.seed,
        steps=settings.steps,
        num_samples=settings.num_samples,
        planes=tuple(settings.planes),
        flip_views=None if settings.flip_views == "auto" else int(settings.flip_views),
        input_consistency=settings.input_consistency == "auto",
        max_memory_gb=settings.memory_per_job(parallel_jobs),
        threads=threads,
    )


def init_single_run_wf(run: AnatRun, settings: Settings, options: SROptions,
                       ) -> pe.Workflow:
    """preproc -> superres -> outputs for one run."""
    workflow = pe.Workflow(name=run_work_dir(Path("."), run).name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    inputnode.inputs.in_file = str(run.path)
    image = load_header(run.path)
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    grid_zooms = ras_zooms(image)
    resolution = settings.output_resolution or default_resolution(grid_zooms)
    restore = blurred_axes(grid_zooms, resolution)
    factors = tuple(float(z) / resolution for z in grid_zooms)
    adapt_steps = 0
    if settings.adapt == "auto":
        if anisotropy(grid_zooms) >= MIN_ANISOTROPY and len(restore) == 1:
            adapt_steps = settings.adapt_steps
        else:
            LOGGER.info("%s: voxels %s mm are not anisotropic enough to learn from their "
                        "in-plane detail: --adapt skipped", run.relpath,
                        "x".join(f"{z:g}" for z in zooms))
    preproc = init_preproc_wf(output_resolution=settings.output_resolution,
                              omp_nthreads=options.threads or 1, run_label=run.relpath)
    thickness = run.metadata.get("SliceThickness")
    ratio = None
    if restore and isinstance(thickness, int | float) and thickness > 0:
        ratio = float(thickness) / grid_zooms[restore[0]]
    profile, source = told_slice_profile(settings.slice_profile, run, restore)
    run_options = dataclasses.replace(options, blurred_axes=restore, axis_factors=factors,
                                      adapt_steps=adapt_steps, slice_thickness_ratio=ratio,
                                      slice_profile=profile, slice_profile_source=source)
    if restore:
        description = f"{run.relpath} ({options.method})"
    else:
        description = f"{run.relpath} (resampled only)"
        LOGGER.info("%s: voxels %s mm, already at the %g mm target resolution: resampled only "
                    "(nothing to restore; written without desc-sr)", run.relpath,
                    "x".join(f"{z:g}" for z in zooms), resolution)
    superres = init_superres_wf(run_options, description=description)
    outputs = init_outputs_wf(
        run,
        settings.output_dir,
        skull_stripped=looks_skull_stripped(run.path, run.metadata),
        input_voxel_size=zooms,
        input_dtype=str(image.get_data_dtype()),
        with_uncertainty=options.num_samples > 1 and options.method != "interp",
        with_gates=options.method == "teacher",
        restored=bool(restore),
    )
    workflow.connect([
        (inputnode, preproc, [("in_file", "inputnode.in_file")]),
        (preproc, superres, [("outputnode.out_file", "inputnode.in_file"),
                             ("outputnode.params_file", "inputnode.params_file"),
                             ("outputnode.bias_field", "inputnode.bias_file"),
                             ("outputnode.reoriented_file", "inputnode.source_file")]),
        (preproc, outputs, [("outputnode.resolution", "inputnode.resolution")]),
        (superres, outputs, [("outputnode.out_file", "inputnode.sr_file"),
                             ("outputnode.info_file", "inputnode.info_file"),
                             ("outputnode.gates_file", "inputnode.gates_file"),
                             ("outputnode.std_file", "inputnode.std_file")]),
    ])
    return workflow


def told_slice_profile(choice: str, run: AnatRun, restore: tuple[int, ...],
                       ) -> tuple[str, str]:
    """The slice-profile shape for one run and where it came from: ``--slice-profile`` when
    given, else what the sidecar's ``MRAcquisitionType`` implies for a single thick axis
    (2D: box), else unknown (the engine reads the scan's spectrum)."""
    if choice != "auto":
        return choice, "given"
    implied = slice_profile_from_metadata(run.metadata) if len(restore) == 1 else None
    if implied is None:
        return UNKNOWN, "given"
    LOGGER.info("%s: MRAcquisitionType is %s (slice-selective excitation): the student is told "
                "a %s slice profile (--slice-profile gaussian to override)", run.relpath,
                SLICE_SELECTIVE, implied)
    return implied, f"from MRAcquisitionType {SLICE_SELECTIVE}"


def run_work_dir(work_dir: Path, run: AnatRun) -> Path:
    """Where the graph keeps one run's intermediate files (``--clean-workdir`` removes it)."""
    return work_dir / "bids_mrisr_wf" / f"sub_{run.subject}_wf" / f"{run.label}_wf"


def init_bids_mrisr_wf(runs: list[AnatRun], settings: Settings,
                       weights: VerifiedWeights | None = None,
                       parallel_jobs: int = 1) -> pe.Workflow:
    """The whole participant-level graph for the selected runs.

    ``parallel_jobs`` runs proceed side by side; each gets an equal share of the cores.
    """
    workflow = pe.Workflow(name="bids_mrisr_wf")
    workflow.base_dir = str(settings.work_dir)
    options = sr_options(settings, weights, settings.resolved_omp_nthreads(parallel_jobs),
                         parallel_jobs)
    by_subject: dict[str, list[AnatRun]] = defaultdict(list)
    for run in runs:
        by_subject[run.subject].append(run)
    for subject, subject_runs in sorted(by_subject.items()):
        subject_wf = pe.Workflow(name=f"sub_{subject}_wf")
        subject_wf.add_nodes([init_single_run_wf(run, settings, options)
                              for run in subject_runs])
        workflow.add_nodes([subject_wf])
    return workflow
