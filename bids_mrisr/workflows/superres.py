"""Super-resolution of one preprocessed run through the SR engine."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.interfaces.superres import SuperResolve, set_node_options
from bids_mrisr.sr.options import SROptions

DEFAULT_DECLARED_GB = 3.0
"""Memory declared for an SR node without --mem: the engine's 2 GB CPU activation budget
(sr.planning.DEFAULT_CPU_BUDGET_GB) plus about 1 GB of full-size volumes."""


def init_superres_wf(options: SROptions, description: str = "super-resolution",
                     name: str = "superres_wf",
                     ) -> pe.Workflow:
    """Inputs: ``in_file``, ``params_file``, ``bias_file`` (the N4 field, put back after SR),
    ``source_file`` (the reoriented input: the output is 0 where it is 0 all around).
    Outputs: ``out_file``, ``gates_file``, ``std_file``, ``info_file`` (see
    :class:`SuperResolve`).

    ``options`` is the engine's own settings object, built once in ``workflows/base.py``; it
    reaches the node as JSON (:func:`set_node_options`), hashed but for its runtime fields.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["in_file", "params_file", "bias_file", "source_file"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_file", "gates_file", "std_file", "info_file"]),
        name="outputnode",
    )
    node = SuperResolve(description=description)
    set_node_options(node.inputs, options)
    threads = options.threads or 1
    # Declare to MultiProc what the node may use: its share of --mem (it tiles to fit), or the
    # engine's default CPU working budget plus the volumes when no --mem is given.
    superres = pe.Node(node, name="superres", n_procs=threads,
                       mem_gb=options.max_memory_gb or DEFAULT_DECLARED_GB)
    workflow.connect([
        (inputnode, superres, [("in_file", "in_file"), ("params_file", "params_file"),
                               ("bias_file", "bias_file"), ("source_file", "source_file")]),
        (superres, outputnode, [("out_file", "out_file"), ("gates_file", "gates_file"),
                                ("std_file", "std_file"), ("info_file", "info_file")]),
    ])
    return workflow
