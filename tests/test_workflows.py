"""Workflow graphs build with the expected nodes and connections."""

from __future__ import annotations

from bids_mrisr.bids.layout import discover_runs
from bids_mrisr.cli.parser import build_settings
from bids_mrisr.interfaces.superres import node_options
from bids_mrisr.workflows.base import init_bids_mrisr_wf
from bids_mrisr.workflows.preproc import init_preproc_wf


def test_preproc_graph_order():
    workflow = init_preproc_wf(output_resolution=1.0)
    graph = workflow._create_flat_graph()
    names = {node.name for node in graph.nodes}
    assert {"reorient", "n4", "normalise", "resample"} <= names
    edges = {(a.name, b.name) for a, b in graph.edges}
    assert ("reorient", "n4") in edges and ("n4", "normalise") in edges
    assert ("normalise", "resample") in edges


def test_full_graph_has_one_branch_per_run(phantom_dataset, tmp_path):
    settings = build_settings([str(phantom_dataset), str(tmp_path / "out"), "participant",
                               "-w", str(tmp_path / "work"), "--model", "interp"])
    runs = discover_runs(phantom_dataset)
    workflow = init_bids_mrisr_wf(runs, settings)
    graph = workflow._create_flat_graph()
    superres = [n for n in graph.nodes if n.name == "superres"]
    writers = [n for n in graph.nodes if n.name.startswith("write_")]
    assert len(superres) == len(writers) == len(runs) == 4
    assert all(node_options(node.inputs).method == "interp" for node in superres)
    assert all(node.overwrite for node in writers)


def test_parallel_jobs_share_memory_and_threads_and_sr_gets_the_geometry(phantom_dataset,
                                                                         tmp_path):
    settings = build_settings([str(phantom_dataset), str(tmp_path / "out"), "participant",
                               "-w", str(tmp_path / "work"), "--model", "interp",
                               "--nprocs", "2", "--mem", "8G"])
    runs = discover_runs(phantom_dataset)
    workflow = init_bids_mrisr_wf(runs, settings, parallel_jobs=2)
    graph = workflow._create_flat_graph()
    superres = [n for n in graph.nodes if n.name == "superres"]
    for node in superres:
        options = node_options(node.inputs)
        assert options.max_memory_gb == 4.0  # half of --mem each: two jobs side by side
        assert node.mem_gb == 4.0  # and that is what MultiProc is told
        assert options.threads == 1
        assert options.blurred_axes == (2,)  # the phantoms are 1 x 1 x 3 mm
    fields = {dst for _, b, data in graph.edges(data=True) if b.name == "superres"
              for _, dst in data["connect"]}
    assert "bias_file" in fields  # the N4 field goes back into the output


def test_sidecar_metadata_is_inherited_through_pybids_and_reaches_the_sr_node(tmp_path):
    import json

    from tests.conftest import make_dataset

    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    (bids / "T1w.json").write_text(json.dumps({"SliceThickness": 3.6, "SkullStripped": True}))
    runs = discover_runs(bids)
    assert runs[0].metadata["SliceThickness"] == 3.6  # top-level sidecar, inherited
    settings = build_settings([str(bids), str(tmp_path / "out"), "participant",
                               "-w", str(tmp_path / "work"), "--model", "interp"])
    graph = init_bids_mrisr_wf(runs, settings)._create_flat_graph()
    (node,) = [n for n in graph.nodes if n.name == "superres"]
    options = node_options(node.inputs)
    assert abs(options.slice_thickness_ratio - 1.2) < 1e-6  # 3.6 mm over 3 mm spacing
    assert options.axis_factors == (1.0, 1.0, 3.0)


def test_a_2d_acquisition_tells_a_box_profile_unless_the_flag_says_otherwise(tmp_path):
    import json

    from bids_mrisr.bids.inputs import slice_profile_from_metadata
    from tests.conftest import make_dataset, phantom_volume, write_volume

    assert slice_profile_from_metadata({"MRAcquisitionType": "2D"}) == "box"
    assert slice_profile_from_metadata({"MRAcquisitionType": "3D"}) is None
    assert slice_profile_from_metadata(None) is None
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-02/anat/sub-02_T1w.nii.gz": None})
    # sub-01: 1 x 1 x 3 mm, one thick axis; sub-02: 2 mm isotropic, every axis coarse
    write_volume(bids / "sub-02/anat/sub-02_T1w.nii.gz", phantom_volume((24, 24, 24)),
                 zooms=(2.0, 2.0, 2.0))
    for sub in ("01", "02"):
        (bids / f"sub-{sub}/anat/sub-{sub}_T1w.json").write_text(
            json.dumps({"MRAcquisitionType": "2D"}))
    runs = discover_runs(bids)

    def told(*flags: str) -> dict[str, tuple]:
        settings = build_settings([str(bids), str(tmp_path / "out"), "participant",
                                   "-w", str(tmp_path / "work"), "--model", "interp", *flags])
        graph = init_bids_mrisr_wf(runs, settings)._create_flat_graph()
        return {n._hierarchy.split(".")[1]: (node_options(n.inputs).slice_profile,
                                              node_options(n.inputs).slice_profile_source)
                for n in graph.nodes if n.name == "superres"}

    auto = told()
    assert auto["sub_01_wf"] == ("box", "from MRAcquisitionType 2D")
    assert auto["sub_02_wf"] == ("unknown", "given")  # isotropic: no thick axis, no profile
    assert told("--slice-profile", "gaussian")["sub_01_wf"] == ("gaussian", "given")


def test_one_writer_node_per_product(phantom_dataset, tmp_path):
    from bids_mrisr.sr.checkpoint import random_checkpoint
    from bids_mrisr.sr.networks.config import ModelConfig

    random_checkpoint(tmp_path / "teacher", ModelConfig.tiny_teacher())
    runs = discover_runs(phantom_dataset)[:1]
    for extra, expected in (
        (["--model", "interp"], {"write_sr"}),
        (["--model", "teacher", "--weights", str(tmp_path / "teacher")],
         {"write_sr", "write_gates"}),
        (["--model", "teacher", "--weights", str(tmp_path / "teacher"), "--num-samples", "2"],
         {"write_sr", "write_gates", "write_uncertainty"}),
    ):
        settings = build_settings([str(phantom_dataset), str(tmp_path / "out"), "participant",
                                   "-w", str(tmp_path / "work"), *extra])
        graph = init_bids_mrisr_wf(runs, settings)._create_flat_graph()
        writers = {n.name: n for n in graph.nodes if n.name.startswith("write_")}
        assert set(writers) == expected, extra
        assert {n.inputs.product for n in writers.values()} == {
            {"write_sr": "sr", "write_gates": "gates",
             "write_uncertainty": "uncertainty"}[name] for name in expected}


def test_a_run_already_at_the_target_resolution_is_written_as_resampled_only(tmp_path):
    from tests.conftest import make_dataset, phantom_volume, write_volume

    bids = make_dataset(tmp_path / "bids", {})
    write_volume(bids / "sub-iso/anat/sub-iso_T1w.nii.gz", phantom_volume((40, 44, 40)),
                 zooms=(1.0, 1.0, 1.0))
    write_volume(bids / "sub-thick/anat/sub-thick_T1w.nii.gz", phantom_volume())
    settings = build_settings([str(bids), str(tmp_path / "out"), "participant",
                               "-w", str(tmp_path / "work")])
    graph = init_bids_mrisr_wf(discover_runs(bids), settings)._create_flat_graph()
    writers = {n.inputs.stem: n for n in graph.nodes if n.name == "write_sr"}
    assert writers["sub-iso"].inputs.restored is False
    assert writers["sub-thick"].inputs.restored is True
    superres = {n.fullname.split(".")[2]: n for n in graph.nodes if n.name == "superres"}
    iso = next(node for name, node in superres.items() if "iso" in name)
    assert node_options(iso.inputs).blurred_axes == ()
    assert "resampled only" in iso.inputs.description


def test_sr_node_hash_follows_every_result_option_and_ignores_the_runtime_ones():
    import dataclasses
    from pathlib import Path

    from bids_mrisr.interfaces.superres import SuperResolve, set_node_options
    from bids_mrisr.sr.options import SROptions

    def hashval(options: SROptions) -> str:
        node = SuperResolve()
        set_node_options(node.inputs, options)
        return node.inputs.get_hashval()[1]

    base = SROptions(weights=Path("/w"), blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0))
    assert hashval(base) == hashval(dataclasses.replace(base))  # a rerun: the cache holds
    changes = {"method": "teacher", "weights": Path("/v"), "seed": 1, "steps": 4,
               "weights_sha256": (("", "ab"), ("box", "cd")),  # new weights of any variant
               "num_samples": 2, "eta": 0.5, "planes": ("axial",),
               "gate_skip_threshold": 0.0, "blurred_axes": (1,),
               "axis_factors": (1.0, 3.0, 1.0), "adapt_steps": 3, "slice_thickness_ratio": 1.2,
               "slice_profile": "box", "slice_profile_source": "sidecar",
               "input_consistency": False, "flip_views": 4}
    runtime = {"device": "cpu", "batch_size": 8, "max_memory_gb": 2.0, "threads": 4}
    assert set(changes) | set(runtime) == {f.name for f in dataclasses.fields(SROptions)}
    assert set(runtime) == SROptions.RUNTIME_FIELDS
    for name, value in changes.items():
        assert hashval(dataclasses.replace(base, **{name: value})) != hashval(base), name
    for name, value in runtime.items():
        assert hashval(dataclasses.replace(base, **{name: value})) == hashval(base), name
