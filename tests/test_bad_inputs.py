"""Bad inputs: one-line errors naming the file, documented exit codes, others still processed."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from bids_mrisr.bids.inputs import input_problem
from bids_mrisr.cli.run import main
from tests.conftest import make_dataset, phantom_volume, write_volume

GOOD = "sub-good/anat/sub-good_T1w.nii.gz"
BAD = "sub-bad/anat/sub-bad_T1w.nii.gz"


def _nan_volume() -> np.ndarray:
    data = phantom_volume()
    data[3, 3, 3] = np.nan
    return data


BAD_CASES = {
    "empty": (b"", "empty (0 bytes)"),
    "corrupt": (gzip.compress(b"this is not a nifti header" * 20), "not a readable NIfTI"),
    "4d": (np.stack([phantom_volume()] * 2, axis=-1), "4D"),
    "zeros": (np.zeros((20, 20, 10)), "all zeros"),
    "few-slices": (phantom_volume((20, 20, 3)), "only 3 slice(s)"),
}


def _write_bad(root, case):
    data, _ = BAD_CASES[case]
    if isinstance(data, bytes):
        path = root / BAD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        write_volume(root / BAD, data)


def _run(bids, tmp_path, *labels):
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--model", "interp", "--skip-bids-validation", "--nprocs", "1"]
    if labels:
        args += ["--participant-label", *labels]
    return main(args)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_run_fails_alone_and_others_are_processed(case, tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    _write_bad(root, case)
    code = _run(root, tmp_path)
    assert code == 1
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if f"{root / BAD}: " in line]
    assert message and BAD_CASES[case][1] in message[0]
    assert "Traceback" not in err
    assert (tmp_path / "out/sub-good/anat/sub-good_res-1mm_desc-sr_T1w.nii.gz").exists()
    assert not list((tmp_path / "out").glob("sub-bad/anat/*"))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_only_selected_input_bad_exits_65(case, tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    _write_bad(root, case)
    assert _run(root, tmp_path, "bad") == 65
    assert "bad data" in capsys.readouterr().out  # the summary table still prints


def test_nan_float_volume(tmp_path):
    path = write_volume(tmp_path / "nan.nii.gz", _nan_volume(), dtype=np.float32)
    assert input_problem(path) == "contains 1 non-finite (NaN/Inf) voxel(s)"
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    write_volume(root / BAD, _nan_volume(), dtype=np.float32)
    assert _run(root, tmp_path, "bad") == 65


def test_missing_dataset_description_exits_16(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None}, description=False)
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    assert code == 16
    assert "dataset_description.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_invalid_bids_exits_16(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    (root / "sub-good" / "anat" / "not_bids_at_all.txt").write_text("x")
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--model", "interp"])
    assert code == 16
    assert "not valid BIDS" in capsys.readouterr().err


def test_participant_label_nosuchsubject_exits_18(tmp_path):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    assert _run(root, tmp_path, "nosuchsubject") == 18


def test_teacher_without_weights_is_clear_error(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--model", "teacher", "--skip-bids-validation"])
    assert code == 64
    err = capsys.readouterr().err
    assert "no trained weights" in err and "--weights" in err


def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--device", "cuda", "--skip-bids-validation"])
    assert code == 64
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("n4.nii"))
