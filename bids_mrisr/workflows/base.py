"""The top-level graph: one sub-workflow per subject, one branch per anatomical run.

Settings are read here, once, and handed to the builders below as plain arguments.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.bids.inputs import looks_skull_stripped
from bids_mrisr.bids.layout import AnatRun
from bids_mrisr.config import Settings
from bids_mrisr.image.reorient import ras_zooms
from bids_mrisr.image.resample import default_resolution
from bids_mrisr.sr.geometry import blurred_axes
from bids_mrisr.workflows.outputs import init_outputs_wf
from bids_mrisr.workflows.preproc import init_preproc_wf
from bids_mrisr.workflows.superres import SRParameters, init_superres_wf


def sr_parameters(settings: Settings, weights: Path | None, weights_sha256: str | None,
                  omp_nthreads: int, parallel_jobs: int = 1) -> SRParameters:
    """The SR node's settings; threads and the memory budget are this job's share."""
    return SRParameters(
        method=settings.model,
        weights=str(weights) if weights else None,
        weights_sha256=weights_sha256,
        device=settings.device,
        seed=settings.seed,
        steps=settings.steps,
        num_samples=settings.num_samples,
        planes=settings.planes,
        mem_gb=settings.memory_per_job(parallel_jobs),
        omp_nthreads=omp_nthreads,
    )


def _sidecar(path: Path) -> dict:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            candidate = path.with_name(name[: -len(ext)] + ".json")
            if candidate.is_file():
                try:
                    return json.loads(candidate.read_text())
                except json.JSONDecodeError:
                    return {}
    return {}


def init_single_run_wf(run: AnatRun, settings: Settings, params: SRParameters,
                       ) -> pe.Workflow:
    """preproc -> superres -> outputs for one run."""
    workflow = pe.Workflow(name=f"{run.label}_wf")
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    inputnode.inputs.in_file = str(run.path)
    image = nib.load(str(run.path))
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    grid_zooms = ras_zooms(image)
    resolution = settings.output_resolution or default_resolution(grid_zooms)
    restore = blurred_axes(grid_zooms, resolution)
    preproc = init_preproc_wf(output_resolution=settings.output_resolution,
                              omp_nthreads=params.omp_nthreads)
    superres = init_superres_wf(params, description=f"{run.relpath} ({params.method})",
                                blurred_axes=restore)
    outputs = init_outputs_wf(
        run,
        settings.output_dir,
        skull_stripped=looks_skull_stripped(run.path, _sidecar(run.path)),
        input_voxel_size=zooms,
    )
    workflow.connect([
        (inputnode, preproc, [("in_file", "inputnode.in_file")]),
        (preproc, superres, [("outputnode.out_file", "inputnode.in_file"),
                             ("outputnode.params_file", "inputnode.params_file"),
                             ("outputnode.bias_field", "inputnode.bias_file")]),
        (preproc, outputs, [("outputnode.resolution", "inputnode.resolution")]),
        (superres, outputs, [("outputnode.out_file", "inputnode.sr_file"),
                             ("outputnode.info_file", "inputnode.info_file"),
                             ("outputnode.gates_file", "inputnode.gates_file"),
                             ("outputnode.std_file", "inputnode.std_file")]),
    ])
    return workflow


def init_bids_mrisr_wf(runs: list[AnatRun], settings: Settings,
                       weights: Path | None = None, weights_sha256: str | None = None,
                       parallel_jobs: int = 1) -> pe.Workflow:
    """The whole participant-level graph for the selected runs.

    ``parallel_jobs`` runs proceed side by side; each gets an equal share of the cores.
    """
    workflow = pe.Workflow(name="bids_mrisr_wf")
    workflow.base_dir = str(settings.work_dir)
    params = sr_parameters(settings, weights, weights_sha256,
                           settings.resolved_omp_nthreads(parallel_jobs), parallel_jobs)
    by_subject: dict[str, list[AnatRun]] = defaultdict(list)
    for run in runs:
        by_subject[run.subject].append(run)
    for subject, subject_runs in sorted(by_subject.items()):
        subject_wf = pe.Workflow(name=f"sub_{subject}_wf")
        subject_wf.add_nodes([init_single_run_wf(run, settings, params) for run in subject_runs])
        workflow.add_nodes([subject_wf])
    return workflow
