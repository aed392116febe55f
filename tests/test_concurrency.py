"""Several participant runs writing into one output folder at the same time (job arrays)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bids_mrisr.bids.locks import SubjectLock, SubjectLockedError
from tests.conftest import make_dataset


def _command(bids, out, work, label):
    return [sys.executable, "-m", "bids_mrisr.cli.run", str(bids), str(out), "participant",
            "-w", str(work), "--participant-label", label, "--model", "interp",
            "--skip-bids-validation", "--nprocs", "1"]


def test_two_subjects_at_once_into_one_output_dir(tmp_path):
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-02/anat/sub-02_T1w.nii.gz": None})
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_command(bids, out, tmp_path / f"work{label}", label), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label in ("01", "02")]
    results = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert sorted((out / ".bidsignore").read_text().split()) == sorted(set(
        (out / ".bidsignore").read_text().split()))  # no pattern written twice
    for label in ("01", "02"):
        assert (out / f"sub-{label}/anat/sub-{label}_res-1mm_desc-sr_T1w.nii.gz").is_file()
        assert (out / f"sub-{label}.html").is_file()
    group = subprocess.run([sys.executable, "-m", "bids_mrisr.cli.run", str(bids), str(out),
                            "group"], env=env, capture_output=True, text=True, timeout=300)
    assert group.returncode == 0, group.stderr
    rows = (out / "group_summary.tsv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per run


def test_one_subject_is_processed_by_one_run_at_a_time(tmp_path):
    first = SubjectLock(tmp_path, "01")
    first.acquire()
    try:
        second = SubjectLock(tmp_path, "01")
        try:
            second.acquire()
        except SubjectLockedError as err:
            assert "another bids_mrisr run is processing sub-01" in str(err)
        else:
            raise AssertionError("a second lock on sub-01 was granted")
        other = SubjectLock(tmp_path, "02")
        other.acquire()  # other subjects are not blocked
        other.release()
    finally:
        first.release()
    again = SubjectLock(tmp_path, "01")
    again.acquire()  # released: free again
    again.release()


def test_a_run_for_a_subject_in_progress_leaves_it_and_does_the_others(tmp_path, capsys):
    from bids_mrisr.cli.run import main

    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-02/anat/sub-02_T1w.nii.gz": None})
    out = tmp_path / "out"
    busy = SubjectLock(out, "01")  # as if another process were writing sub-01
    busy.acquire()
    try:
        code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"),
                     "--model", "interp", "--skip-bids-validation", "--nprocs", "1"])
    finally:
        busy.release()
    assert code == 1
    captured = capsys.readouterr()
    assert "another bids_mrisr run is processing sub-01" in captured.err
    assert not (out / "sub-01").exists() and not (out / "sub-01.html").exists()
    assert (out / "sub-02/anat/sub-02_res-1mm_desc-sr_T1w.nii.gz").is_file()
