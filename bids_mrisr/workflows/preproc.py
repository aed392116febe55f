"""Preprocessing: reorient -> N4 -> normalise -> cubic B-spline onto the target grid."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.interfaces.preproc import N4BiasCorrection, Normalise, Reorient, ResampleToGrid


def init_preproc_wf(
    output_resolution: float | None = None,
    omp_nthreads: int = 1,
    name: str = "preproc_wf",
    run_label: str = "",
) -> pe.Workflow:
    """Bring one anatomical run onto the normalised, isotropic target grid.

    Inputs: ``in_file``. Outputs: ``out_file`` (normalised, target grid), ``params_file``
    (normalisation parameters, to map results back), ``bias_field``, ``resolution`` (mm),
    ``reoriented_file`` (the input as reoriented, on its own grid).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_file", "params_file", "bias_field", "resolution",
                                      "reoriented_file"]),
        name="outputnode",
    )
    reorient = pe.Node(Reorient(), name="reorient", mem_gb=0.5)
    n4 = pe.Node(N4BiasCorrection(num_threads=omp_nthreads, run_label=run_label), name="n4",
                 n_procs=omp_nthreads, mem_gb=1.0)
    normalise = pe.Node(Normalise(), name="normalise", mem_gb=0.5)
    resample = pe.Node(ResampleToGrid(run_label=run_label), name="resample", mem_gb=1.5)
    if output_resolution:
        resample.inputs.resolution = output_resolution

    workflow.connect([
        (inputnode, reorient, [("in_file", "in_file")]),
        (reorient, n4, [("out_file", "in_file")]),
        (n4, normalise, [("out_file", "in_file")]),
        (normalise, resample, [("out_file", "in_file")]),
        (resample, outputnode, [("out_file", "out_file"), ("resolution", "resolution")]),
        (normalise, outputnode, [("params_file", "params_file")]),
        (n4, outputnode, [("bias_field", "bias_field")]),
        (reorient, outputnode, [("out_file", "reoriented_file")]),
    ])
    return workflow
