"""Writing one run's derivatives into the output dataset: one writer node per product."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.bids.layout import AnatRun
from bids_mrisr.interfaces.derivatives import WriteDerivative

SR_WRITER = "write_sr"
"""The node whose outputs the graph reports as the run's result (cli/graph.py)."""


def init_outputs_wf(run: AnatRun, output_dir: Path, skull_stripped: bool,
                    input_voxel_size: list[float], input_dtype: str = "float32",
                    with_uncertainty: bool = False, with_gates: bool = False,
                    restored: bool = True, name: str = "outputs_wf") -> pe.Workflow:
    """Inputs: ``sr_file``, ``info_file``, ``gates_file``, ``std_file``, ``resolution``.

    ``restored=False`` (an input already at the target resolution): the volume is written as
    resampled only, ``res-<r>`` without ``desc-sr`` (bids/derivatives.py names both kinds).

    ``write_sr`` always; ``write_uncertainty`` when draws are averaged (``--num-samples`` > 1)
    and ``write_gates`` for the MoEDiff-SR teacher. Each writes nothing if its volume is absent.
    """
    workflow = pe.Workflow(name=name)
    fields = ["sr_file", "info_file", "gates_file", "std_file", "resolution"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    products = [("sr", SR_WRITER, "sr_file")]
    if with_uncertainty:
        products.append(("uncertainty", "write_uncertainty", "std_file"))
    if with_gates:
        products.append(("gates", "write_gates", "gates_file"))
    for product, node_name, field in products:
        # overwrite=True: outputs are rewritten even when the rest of the graph is cached, so a
        # deleted or stale output directory is always brought back in step with the work dir.
        writer = pe.Node(
            WriteDerivative(product=product, output_dir=str(output_dir), relpath=run.relpath,
                            stem=run.stem, suffix=run.suffix, entities=dict(run.entities),
                            skull_stripped=skull_stripped, input_voxel_size=input_voxel_size,
                            input_dtype=input_dtype, restored=restored),
            name=node_name, overwrite=True, run_without_submitting=True)
        workflow.connect([(inputnode, writer, [(field, "in_file"), ("info_file", "info_file"),
                                               ("resolution", "resolution")])])
    return workflow
