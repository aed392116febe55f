"""End-to-end participant runs on phantoms (and real data when present)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from bids import BIDSLayout

from bids_mrisr.bids.derivatives import output_volumes
from bids_mrisr.bids.validator import validate_dataset
from bids_mrisr.cli.run import main
from tests.conftest import make_dataset, phantom_volume, write_volume


def _run(bids, tmp_path, *extra):
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--model", "interp", "--nprocs", "1", *extra])
    return code, out


def _errors(dataset):
    return [i for i in validate_dataset(dataset) if i.severity == "error"]


def test_phantom_run_is_validator_clean_and_indexable(phantom_dataset, tmp_path):
    before = sorted(p for p in phantom_dataset.rglob("*"))
    code, out = _run(phantom_dataset, tmp_path)
    assert code == 0
    assert sorted(p for p in phantom_dataset.rglob("*")) == before  # nothing written to input

    expected = [
        "sub-01/anat/sub-01_res-1mm_desc-sr_T1w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_run-1_res-1mm_desc-sr_T1w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_run-2_res-1mm_desc-sr_T1w.nii.gz",
        "sub-02/ses-b/anat/sub-02_ses-b_acq-fast_res-1mm_desc-sr_T2w.nii.gz",
    ]
    for rel in expected:
        image = nib.load(str(out / rel))
        assert image.header.get_zooms()[:3] == pytest.approx((1.0, 1.0, 1.0))
        assert image.shape == (40, 44, 42)  # 14 slices of 3 mm -> 42 of 1 mm
        assert np.isfinite(image.get_fdata()).all()
        sidecar = json.loads((out / rel.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"][0].startswith("bids:raw:sub-0")
        assert sidecar["SuperResolution"]["Model"] == "interp"
        assert {"Method", "Estimate", "Seconds", "RestoredAxes",  # fields docs/outputs.md lists
                "BiasFieldRestored"} <= set(sidecar["SuperResolution"])
        assert isinstance(sidecar["SkullStripped"], bool)
        assert "Resolution" in sidecar
    assert not list(out.rglob("*FLAIR*"))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_mrisr"
    assert "SourceDatasets" not in description  # a local folder alone identifies nothing
    assert description["DatasetLinks"]["raw"].startswith("file://")
    assert list((out / "sub-01" / "log").glob("*/bids_mrisr.log"))
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temp files

    assert _errors(out) == []
    layout = BIDSLayout(str(out), validate=False, config=["bids", "derivatives"])
    found = layout.get(desc="sr", extension=".nii.gz", return_type="filename")
    assert len(found) == 4
    assert {f.entities["res"] for f in layout.get(desc="sr", extension=".nii.gz")} == {"1mm"}


def test_rerun_reuses_work_dir(phantom_dataset, tmp_path):
    code, out = _run(phantom_dataset, tmp_path, "--participant-label", "01")
    assert code == 0
    n4_result = next((tmp_path / "work").rglob("n4/result_n4.pklz"))
    stamp = n4_result.stat().st_mtime_ns
    target = out / "sub-01/anat/sub-01_res-1mm_desc-sr_T1w.nii.gz"
    target.unlink()
    code, _ = _run(phantom_dataset, tmp_path, "--participant-label", "01")
    assert code == 0
    assert n4_result.stat().st_mtime_ns == stamp  # N4 was not re-run
    assert target.exists()  # but the outputs were written again


def test_explicit_output_resolution(phantom_dataset, tmp_path):
    code, out = _run(phantom_dataset, tmp_path, "--participant-label", "01",
                     "--output-resolution", "2")
    assert code == 0
    image = nib.load(str(out / "sub-01/anat/sub-01_res-2mm_desc-sr_T1w.nii.gz"))
    assert image.shape == (20, 22, 21)


def test_group_level_after_participant(phantom_dataset, tmp_path):
    code, out = _run(phantom_dataset, tmp_path, "--participant-label", "01")
    assert code == 0
    assert main([str(phantom_dataset), str(out), "group"]) == 0
    table = (out / "group_summary.tsv").read_text().splitlines()
    assert table[0].startswith("output\tsources\tmodel")
    assert len(table) == 2 and "interp" in table[1]
    assert _errors(out) == []


@pytest.mark.realdata
def test_real_data_stroke_and_xa30(real_data, tmp_path):
    code, out = _run(real_data, tmp_path, "--participant-label", "stroke01", "sub-xa30")
    assert code == 0
    # stroke01 is already at 1 mm: resampled only, named without desc-sr
    volumes = {v.path.relative_to(out).as_posix(): v.restored for v in output_volumes(out)}
    assert volumes == {
        "sub-stroke01/anat/sub-stroke01_res-1mm_T1w.nii.gz": False,
        "sub-stroke01/anat/sub-stroke01_res-1mm_T2w.nii.gz": False,
        "sub-xa30/anat/sub-xa30_acq-lowres_res-1mm_desc-sr_T1w.nii.gz": True,
    }
    outputs = sorted(volumes)
    xa30 = nib.load(str(out / outputs[2]))
    assert xa30.header.get_zooms()[:3] == pytest.approx((1.0, 1.0, 1.0))
    assert xa30.shape == (192, 256, 256)  # 2 mm -> 1 mm
    sidecar = json.loads((out / outputs[0].replace(".nii.gz", ".json")).read_text())
    assert sidecar["SkullStripped"] is True
    assert "resampled only" in sidecar["Description"]
    assert _errors(out) == []
    assert main([str(real_data), str(out), "group"]) == 0
    rows = list(csv.DictReader((out / "group_summary.tsv").open(), delimiter="\t"))
    assert [(r["output"], r["kind"], r["flag"]) for r in rows] == [
        (outputs[2], "super-resolved", ""),
        (outputs[0], "resampled-only", ""), (outputs[1], "resampled-only", "")]


def test_runs_in_parallel_with_multiproc(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(phantom_dataset), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--model", "interp", "--nprocs", "2", "--participant-label", "02",
                 "--skip-bids-validation"])
    assert code == 0
    assert "nipype MultiProc" in capsys.readouterr().err
    assert len(list(out.rglob("*_desc-sr_*.nii.gz"))) == 3


def test_source_dataset_is_its_doi_and_git_commit(tmp_path):
    import subprocess

    from bids_mrisr.bids.derivatives import dataset_description

    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    content = json.loads((root / "dataset_description.json").read_text())
    (root / "dataset_description.json").write_text(json.dumps(
        {**content, "DatasetDOI": "doi:10.18112/openneuro.ds000001.v1.0.0"}))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "data"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    source = dataset_description(root)["SourceDatasets"][0]
    assert source == {"DOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
                      "URL": "https://doi.org/10.18112/openneuro.ds000001.v1.0.0",
                      "Version": commit}


def test_integer_input_gives_scaled_int16_output_and_float_stays_float(tmp_path):

    root = make_dataset(tmp_path / "bids", {})
    write_volume(root / "sub-int/anat/sub-int_T1w.nii.gz", phantom_volume(), dtype=np.uint8)
    write_volume(root / "sub-flt/anat/sub-flt_T1w.nii.gz", phantom_volume(), dtype=np.float32)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "-w", str(tmp_path / "w"), "--model",
                 "interp", "--skip-bids-validation", "--nprocs", "1"]) == 0
    integer = nib.load(str(out / "sub-int/anat/sub-int_res-1mm_desc-sr_T1w.nii.gz"))
    assert integer.get_data_dtype() == np.int16
    assert integer.dataobj.inter == 0.0 and integer.dataobj.slope > 0  # zero stays zero
    assert integer.dataobj.get_unscaled().max() == np.iinfo(np.int16).max  # full range used
    floating = nib.load(str(out / "sub-flt/anat/sub-flt_res-1mm_desc-sr_T1w.nii.gz"))
    assert floating.get_data_dtype() == np.float32


def test_clean_workdir_drops_finished_runs_only(tmp_path):
    from bids_mrisr.bids.layout import discover_runs
    from bids_mrisr.workflows.base import run_work_dir

    root = make_dataset(tmp_path / "bids", {})
    write_volume(root / "sub-01/anat/sub-01_T1w.nii.gz", phantom_volume())
    write_volume(root / "sub-02/anat/sub-02_T1w.nii.gz", np.zeros((20, 20, 10)))  # bad data
    work = tmp_path / "w"
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(work), "--model",
                 "interp", "--skip-bids-validation", "--nprocs", "1", "--clean-workdir"])
    assert code == 1  # sub-02 is bad data
    assert (tmp_path / "out/sub-01/anat/sub-01_res-1mm_desc-sr_T1w.nii.gz").is_file()
    good = next(r for r in discover_runs(root) if r.subject == "01")
    assert not run_work_dir(work, good).exists()
    assert (work / "bids_mrisr_wf").is_dir()  # the graph's own files stay
    code = main([str(root), str(tmp_path / "out2"), "participant", "-w", str(work), "--model",
                 "interp", "--skip-bids-validation", "--nprocs", "1"])
    assert code == 1
    assert run_work_dir(work, good).is_dir()  # without the flag the intermediates are kept


def test_input_already_at_the_target_resolution_is_counted_apart(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {})
    write_volume(root / "sub-iso/anat/sub-iso_T1w.nii.gz", phantom_volume((40, 44, 40)),
                 zooms=(1.0, 1.0, 1.0))
    write_volume(root / "sub-thick/anat/sub-thick_T1w.nii.gz", phantom_volume())
    assert main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--skip-bids-validation", "--nprocs", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 run(s) super-resolved; 1 already at the target resolution" in out
    iso_line = next(line for line in out.splitlines() if line.startswith("sub-iso/"))
    assert "resampled only" in iso_line
    assert "sub-iso/anat/sub-iso_res-1mm_T1w.nii.gz" in iso_line  # named for what it is
