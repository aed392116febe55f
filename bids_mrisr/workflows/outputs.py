"""Writing one run's derivatives into the output dataset."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_mrisr.bids.layout import AnatRun
from bids_mrisr.interfaces.derivatives import WriteDerivatives


def init_outputs_wf(run: AnatRun, output_dir: Path, skull_stripped: bool,
                    input_voxel_size: list[float], input_dtype: str = "float32",
                    name: str = "outputs_wf") -> pe.Workflow:
    """Inputs: ``sr_file``, ``info_file``, ``gates_file``, ``std_file``, ``resolution``."""
    workflow = pe.Workflow(name=name)
    fields = ["sr_file", "info_file", "gates_file", "std_file", "resolution"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    # overwrite=True: outputs are rewritten even when the rest of the graph is cached, so a
    # deleted or stale output directory is always brought back in step with the work dir.
    write = pe.Node(
        WriteDerivatives(
            output_dir=str(output_dir),
            relpath=run.relpath,
            stem=run.stem,
            suffix=run.suffix,
            entities=dict(run.entities),
            skull_stripped=skull_stripped,
            input_voxel_size=input_voxel_size,
            input_dtype=input_dtype,
        ),
        name="write_derivatives",
        overwrite=True,
        run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, write, [("sr_file", "sr_file"), ("info_file", "info_file"),
                            ("gates_file", "gates_file"), ("std_file", "std_file"),
                            ("resolution", "resolution")]),
    ])
    return workflow
