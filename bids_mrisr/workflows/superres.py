"""Super-resolution of one preprocessed run through the SR engine."""

from __future__ import annotations

from dataclasses import dataclass

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.interfaces.superres import SuperResolve

DEFAULT_DECLARED_GB = 3.0
"""Memory declared for an SR node without --mem: the engine's 2 GB CPU activation budget
(sr.inference.DEFAULT_CPU_BUDGET_GB) plus about 1 GB of full-size volumes."""


@dataclass(frozen=True)
class SRParameters:
    """What the SR node needs, taken from the settings once in workflows/base.py."""

    method: str = "student"
    weights: str | None = None
    weights_sha256: str | None = None
    device: str = "auto"
    seed: int = 0
    steps: int | None = None
    num_samples: int = 1
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    mem_gb: float | None = None
    omp_nthreads: int = 1


def init_superres_wf(params: SRParameters, description: str = "super-resolution",
                     blurred_axes: tuple[int, ...] | None = None, name: str = "superres_wf",
                     ) -> pe.Workflow:
    """Inputs: ``in_file``, ``params_file``, ``bias_file`` (the N4 field, put back after SR).
    Outputs: ``out_file``, ``gates_file``, ``std_file``, ``info_file`` (see
    :class:`SuperResolve`). ``blurred_axes``: the target-grid axes the input sampled coarsely
    (from the header, coarsest first)."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "params_file", "bias_file"]),
                        name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_file", "gates_file", "std_file", "info_file"]),
        name="outputnode",
    )
    node = SuperResolve(
        method=params.method,
        device=params.device,
        seed=params.seed,
        num_samples=params.num_samples,
        planes=list(params.planes),
        num_threads=params.omp_nthreads,
        description=description,
    )
    if blurred_axes is not None:
        node.inputs.blurred_axes = list(blurred_axes)
    if params.weights:
        node.inputs.weights = params.weights
    if params.weights_sha256:
        node.inputs.weights_sha256 = params.weights_sha256
    if params.steps:
        node.inputs.steps = params.steps
    if params.mem_gb:
        node.inputs.max_memory_gb = params.mem_gb
    # Declare to MultiProc what the node may use: its share of --mem (it tiles to fit), or the
    # engine's default CPU working budget plus the volumes when no --mem is given.
    superres = pe.Node(node, name="superres", n_procs=params.omp_nthreads,
                       mem_gb=params.mem_gb if params.mem_gb else DEFAULT_DECLARED_GB)
    workflow.connect([
        (inputnode, superres, [("in_file", "in_file"), ("params_file", "params_file"),
                               ("bias_file", "bias_file")]),
        (superres, outputnode, [("out_file", "out_file"), ("gates_file", "gates_file"),
                                ("std_file", "std_file"), ("info_file", "info_file")]),
    ])
    return workflow
