"""Runs that needed no restoration: named, described, reported and counted as resampled only.

One dataset holds both kinds: ``sub-thick`` (1 x 1 x 3 mm: one axis to restore) and ``sub-iso``
(a T1w and a T2w already at 1 mm, the default target: nothing to restore).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_mrisr.bids.derivatives import output_volumes, parse_volume_name
from bids_mrisr.bids.validator import validate_dataset
from bids_mrisr.cli.run import main
from bids_mrisr.reports.html import robust_outliers
from tests.conftest import make_dataset, phantom_volume, write_volume

SR = "sub-thick/anat/sub-thick_res-1mm_desc-sr_T1w.nii.gz"
ISO_T1W = "sub-iso/anat/sub-iso_res-1mm_T1w.nii.gz"
ISO_T2W = "sub-iso/anat/sub-iso_res-1mm_T2w.nii.gz"


def _mixed_dataset(root: Path) -> Path:
    bids = make_dataset(root, {})
    write_volume(bids / "sub-iso/anat/sub-iso_T1w.nii.gz", phantom_volume((40, 44, 40)),
                 zooms=(1.0, 1.0, 1.0))
    write_volume(bids / "sub-iso/anat/sub-iso_T2w.nii.gz", phantom_volume((40, 44, 40), seed=2),
                 zooms=(1.0, 1.0, 1.0))
    write_volume(bids / "sub-thick/anat/sub-thick_T1w.nii.gz", phantom_volume())
    return bids


def _app(bids: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bids_mrisr.cli.run", str(bids), str(out), *extra]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The participant level (shipped student, in a subprocess: its console is the user's)
    then the group level, once for the module's read-only checks."""
    root = tmp_path_factory.mktemp("mixed")
    bids = _mixed_dataset(root / "bids")
    out = root / "out"
    run = subprocess.run(
        _app(bids, out, "participant", "-w", str(root / "work"), "--nprocs", "1",
             "--omp-nthreads", "1", "--skip-bids-validation"),
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    group = subprocess.run(_app(bids, out, "group"), capture_output=True, text=True,
                           timeout=300)
    assert group.returncode == 0, group.stderr
    return {"bids": bids, "out": out, "console": run.stdout + run.stderr,
            "group_console": group.stdout + group.stderr, "root": root}


def test_names_say_which_runs_were_super_resolved(mixed):
    out = mixed["out"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == sorted(
        [SR, ISO_T1W, ISO_T2W])
    assert not list(out.rglob("sub-iso*desc-sr*"))
    kinds = {v.path.relative_to(out).as_posix(): v.restored for v in output_volumes(out)}
    assert kinds == {SR: True, ISO_T1W: False, ISO_T2W: False}


def test_sidecars_describe_what_was_done(mixed):
    out = mixed["out"]
    for rel in (ISO_T1W, ISO_T2W):
        meta = json.loads((out / rel.replace(".nii.gz", ".json")).read_text())
        assert "resampled only" in meta["Description"]
        assert "super-resolved" not in meta["Description"]
        assert meta["SuperResolution"]["RestoredAxes"] == []
        assert meta["SuperResolution"]["Restored"].startswith("nothing")
        assert "super-resolution" not in meta["Resolution"]
    sr = json.loads((out / SR.replace(".nii.gz", ".json")).read_text())
    assert sr["Description"].startswith("T1w super-resolved with student")
    assert sr["SuperResolution"]["RestoredAxes"] == [2]


def test_console_says_resampled_only_and_claims_no_sr_steps(mixed):
    lines = mixed["console"].splitlines()
    for name in ("sub-iso_T1w", "sub-iso_T2w"):
        mine = [line for line in lines if f"{name}.nii.gz" in line]
        assert any("resampled only" in line for line in mine), name
        assert not any("steps" in line for line in mine), mine  # no "(student): 1/1 steps"
    assert any("sub-thick_T1w.nii.gz (student)" in line and "steps" in line for line in lines)
    assert "1 of 3 run(s) super-resolved; 2 already at the target resolution" in mixed["console"]


def test_both_kinds_are_validator_clean_and_indexable(mixed):
    from bids import BIDSLayout

    out = mixed["out"]
    assert [i for i in validate_dataset(out) if i.severity == "error"] == []
    layout = BIDSLayout(str(out), validate=False, config=["bids", "derivatives"])
    assert layout.get(desc="sr", extension=".nii.gz", return_type="filename") == [str(out / SR)]
    main_volumes = layout.get(suffix=["T1w", "T2w"], desc=[None, "sr"], res="1mm",
                              extension=".nii.gz", return_type="filename")
    assert sorted(main_volumes) == sorted(str(out / rel) for rel in (SR, ISO_T1W, ISO_T2W))
    # not sMRIPrep's precomputed "desc-preproc_T1w" (a bias-corrected reference)
    assert layout.get(desc="preproc") == []


def test_subject_report_shows_no_difference_map_for_a_resampled_run(mixed):
    out = mixed["out"]
    page = (out / "sub-iso.html").read_text()
    assert page.count("Resampled only: nothing was restored") == 2
    assert "Difference (SR - cubic)" not in page and 'alt="difference"' not in page
    assert "largest |output - cubic| (input units)" in page
    assert "(ok, resampled only)" in page
    assert not list((out / "sub-iso" / "figures").glob("*difference*"))
    qc = json.loads((out / "sub-iso/figures/sub-iso_res-1mm_T1w_qc.json").read_text())
    assert qc["restored"] is False
    assert qc["max_abs_difference"] < 1e-3 * qc["input_p99_5"]  # rounding, not restoration
    thick = (out / "sub-thick.html").read_text()
    assert "Difference (SR - cubic)" in thick and "Resampled only" not in thick


def test_group_counts_and_flags_only_super_resolved_runs(mixed):
    out = mixed["out"]
    rows = list(csv.DictReader((out / "group_summary.tsv").open(), delimiter="\t"))
    assert [(r["output"], r["kind"]) for r in rows] == [
        (SR, "super-resolved"), (ISO_T1W, "resampled-only"), (ISO_T2W, "resampled-only")]
    assert all(r["flag"] == "" for r in rows)
    # what the issue saw: the one super-resolved run, compared with resampled ones, is flagged
    gains = [float(r["sharpness_gain"]) for r in rows]
    assert robust_outliers(gains)[0]
    page = (out / "group.html").read_text()
    assert "1 super-resolved run(s)" in page and "2 run(s) resampled only" in page
    restored, resampled = page.split('id="resampled-only"')
    assert SR in restored and ISO_T1W not in restored and ISO_T2W not in restored
    assert ISO_T1W in resampled and ISO_T2W in resampled and SR not in resampled
    assert "1 super-resolved run(s), 2 resampled only" in mixed["group_console"]


def _fake_run(out: Path, subject: str, restored: bool, model: str, gain: float) -> None:
    """A run's outputs as the participant level leaves them: volume, sidecar, QC figures."""
    name = f"sub-{subject}_res-1mm{'_desc-sr' if restored else ''}_T1w"
    anat = out / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    (anat / f"{name}.nii.gz").write_bytes(b"")
    (anat / f"{name}.json").write_text(json.dumps({
        "Sources": [f"bids:raw:sub-{subject}/anat/sub-{subject}_T1w.nii.gz"],
        "VoxelSize": [1.0] * 3,
        "SuperResolution": {"Model": model, "RestoredAxes": [2] if restored else []}}))
    (out / f"sub-{subject}" / "figures").mkdir()
    (out / f"sub-{subject}" / "figures" / f"{name}_qc.json").write_text(json.dumps(
        {"sharpness_gain": gain, "relative_noise": 0.05}))


def test_outliers_are_judged_among_super_resolved_runs_of_one_model(tmp_path):
    bids = make_dataset(tmp_path / "bids", {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text("{}")
    for i, gain in enumerate([1.50, 1.52, 1.48, 1.51, 3.0]):  # one odd student run
        _fake_run(out, f"s{i}", True, "student", gain)
    for i in range(3):  # the interp baseline gains nothing: not odd among its own kind
        _fake_run(out, f"i{i}", True, "interp", 1.0)
    for i in range(4):  # resampled only: gain 1.0, never compared, never flagged
        _fake_run(out, f"r{i}", False, "student", 1.0)
    assert main([str(bids), str(out), "group"]) == 0
    rows = {r["output"].split("/")[0]: r for r in
            csv.DictReader((out / "group_summary.tsv").open(), delimiter="\t")}
    assert rows["sub-s4"]["flag"] == "unusual sharpness_gain"
    assert [s for s, r in rows.items() if r["flag"]] == ["sub-s4"]
    assert [r["kind"] for r in rows.values()] == ["super-resolved"] * 8 + ["resampled-only"] * 4
    page = (out / "group.html").read_text()
    assert "8 super-resolved run(s)" in page and "4 run(s) resampled only" in page


def test_group_with_resampled_runs_only(tmp_path):
    bids = make_dataset(tmp_path / "bids", {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text("{}")
    _fake_run(out, "r0", False, "student", 1.0)
    assert main([str(bids), str(out), "group"]) == 0
    page = (out / "group.html").read_text()
    assert "0 super-resolved run(s)" in page and "1 run(s) resampled only" in page


def test_reports_only_and_a_rerun_find_the_resampled_run(tmp_path):
    """Without the work dir, --reports-only finds a resampled-only run by its name; a rerun
    over an output of an earlier version (which named it desc-sr) reuses the cached SR node,
    writes the same bytes and removes the old name, so the run is never counted twice."""
    bids = make_dataset(tmp_path / "bids", {})
    write_volume(bids / "sub-iso/anat/sub-iso_T1w.nii.gz", phantom_volume((40, 44, 40)),
                 zooms=(1.0, 1.0, 1.0))
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(bids), str(out), "participant", "-w", str(work), "--model", "interp",
            "--skip-bids-validation", "--nprocs", "1"]
    assert main(args) == 0
    volume = out / "sub-iso/anat/sub-iso_res-1mm_T1w.nii.gz"
    first = volume.read_bytes()
    superres = next(work.rglob("superres/result_superres.pklz"))
    stamp = superres.stat().st_mtime_ns

    old = out / "sub-iso/anat/sub-iso_res-1mm_desc-sr_T1w"  # as an earlier version named it
    shutil.copy(volume, old.with_suffix(".nii.gz"))
    old.with_suffix(".json").write_text("{}")
    assert main(args) == 0
    assert superres.stat().st_mtime_ns == stamp  # the SR node was not run again
    assert volume.read_bytes() == first
    assert not old.with_suffix(".nii.gz").exists() and not old.with_suffix(".json").exists()
    assert [v.path for v in output_volumes(out)] == [volume]

    (out / "sub-iso.html").unlink()
    shutil.rmtree(work)
    assert main([*args, "--reports-only"]) == 0
    assert "Resampled only: nothing was restored" in (out / "sub-iso.html").read_text()


def test_output_names_are_made_and_read_in_one_place():
    from bids_mrisr.bids.derivatives import output_name, volume_desc

    sr = output_name("sub-01_ses-a_run-1", 1.0, volume_desc(True), "T1w")
    plain = output_name("sub-01_ses-a_run-1", 0.8, volume_desc(False), "T2w")
    assert sr == "sub-01_ses-a_run-1_res-1mm_desc-sr_T1w.nii.gz"
    assert plain == "sub-01_ses-a_run-1_res-0p8mm_T2w.nii.gz"
    parsed = parse_volume_name(Path("/o/sub-01/anat") / sr)
    assert (parsed.stem, parsed.resolution, parsed.suffix, parsed.restored) == (
        "sub-01_ses-a_run-1", "1mm", "T1w", True)
    assert parsed.uncertainty_path.name == "sub-01_ses-a_run-1_res-1mm_desc-srstd_T1w.nii.gz"
    assert parsed.gates_path.name == "sub-01_ses-a_run-1_res-1mm_desc-T1wgates_probseg.nii.gz"
    assert parse_volume_name(Path(plain)).restored is False
    for other in ("sub-01_res-1mm_desc-srstd_T1w.nii.gz", "sub-01_T1w.nii.gz",
                  "sub-01_res-1mm_desc-T1wgates_probseg.nii.gz", "sub-01_res-1mm_T1w.json"):
        assert parse_volume_name(Path(other)) is None, other
