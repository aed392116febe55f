"""Bad inputs: one-line errors naming the file, documented exit codes, others still processed."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.bids.inputs import input_problem
from bids_mrisr.cli.run import main
from bids_mrisr.memory import minimum_peak_gb
from tests.conftest import make_dataset, phantom_volume, write_volume

GOOD = "sub-good/anat/sub-good_T1w.nii.gz"
BAD = "sub-bad/anat/sub-bad_T1w.nii.gz"


def _nan_volume() -> np.ndarray:
    data = phantom_volume()
    data[3, 3, 3] = np.nan
    return data


def _inf_volume() -> np.ndarray:
    data = phantom_volume()
    data[2, 2, 2] = np.inf
    return data


def _raw_nifti(path, edit, shape=None) -> None:
    """A .nii.gz written byte by byte, so a header nibabel would never save can be tested."""
    data = phantom_volume()
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape or data.shape)
    header.set_zooms((1.0, 1.0, 3.0))
    header["vox_offset"] = 352
    header.set_sform(np.diag([1.0, 1.0, 3.0, 1.0]), code=1)
    header.set_qform(None, code=0)
    edit(header)
    payload = header.binaryblock + b"\0" * 4
    payload += b"" if shape else data.astype(np.float32).tobytes(order="F")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload))


def _write_truncated(path) -> None:
    write_volume(path, phantom_volume())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _write_bad_magic(path) -> None:
    path = path.with_name(path.name.replace(".nii.gz", ".nii"))
    write_volume(path, phantom_volume())
    content = bytearray(path.read_bytes())
    content[344:348] = b"xxxx"  # the NIfTI magic "n+1\0"
    path.write_bytes(bytes(content))


def _write_twins(path) -> None:
    write_volume(path, phantom_volume())
    write_volume(path.with_name(path.name.replace(".nii.gz", ".nii")), phantom_volume())


def _write_broken_link(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.parent / "moved_away.nii.gz")


def _set_sform_row(row: str, values) -> object:
    return lambda header: header.__setitem__(row, np.array(values, dtype=np.float32))


def _zero_voxel_size(header) -> None:
    header.set_sform(None, code=0)
    header["pixdim"][1] = 0.0


# case -> (writer or data, the words the one-line message must contain)
BAD_CASES = {
    "empty": (b"", "is empty (0 bytes)"),
    "corrupt": (gzip.compress(b"this is not a nifti header" * 20), "not a readable NIfTI"),
    "truncated-gzip": (_write_truncated, "not a readable NIfTI"),
    "wrong-magic": (_write_bad_magic, "not a readable NIfTI"),
    "broken-symlink": (_write_broken_link, "is a broken symbolic link"),
    "nii-and-nii.gz": (_write_twins, "is the same run as"),
    "4d": (np.stack([phantom_volume()] * 2, axis=-1), "4D"),
    "zeros": (np.zeros((20, 20, 10)), "all zeros"),
    "few-slices": (phantom_volume((20, 20, 3)), "only 3 slice(s)"),
    "nan": (lambda path: write_volume(path, _nan_volume(), dtype=np.float32),
            "non-finite (NaN/Inf)"),
    "inf": (lambda path: write_volume(path, _inf_volume(), dtype=np.float32),
            "non-finite (NaN/Inf)"),
    "zero-voxel-size": (lambda path: _raw_nifti(path, _zero_voxel_size),
                        "invalid voxel sizes"),
    "singular-affine": (lambda path: _raw_nifti(path, _set_sform_row("srow_z", [0, 0, 0, 0])),
                        "singular affine"),
    "nonfinite-affine": (lambda path: _raw_nifti(
        path, _set_sform_row("srow_x", [np.nan, 0, 0, 0])), "non-finite affine"),
}


def _write_bad(root, case):
    data, _ = BAD_CASES[case]
    path = root / BAD
    if callable(data):
        path.parent.mkdir(parents=True, exist_ok=True)
        data(path)
    elif isinstance(data, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        write_volume(path, data)


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
    message = [line for line in err.splitlines() if f"{root / 'sub-bad/anat/sub-bad_T1w'}" in line]
    assert message and BAD_CASES[case][1] in message[0], err
    assert "Traceback" not in err
    assert (tmp_path / "out/sub-good/anat/sub-good_res-1mm_desc-sr_T1w.nii.gz").exists()
    assert not list((tmp_path / "out").glob("sub-bad/anat/*"))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_only_selected_input_bad_exits_65(case, tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    _write_bad(root, case)
    assert _run(root, tmp_path, "bad") == 65
    assert "bad data" in capsys.readouterr().out  # the summary table still prints


def test_nan_float_volume_message_counts_the_voxels(tmp_path):
    path = write_volume(tmp_path / "nan.nii.gz", _nan_volume(), dtype=np.float32)
    assert input_problem(path) == "contains 1 non-finite (NaN/Inf) voxel(s)"


def test_unreadable_file_names_the_permission():
    """As root (CI), the check runs as user nobody through setpriv: root reads anything."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bids_mrisr_perm_"))
    try:
        folder.chmod(0o755)
        path = write_volume(folder / "locked.nii.gz", phantom_volume())
        path.chmod(0)
        if os.geteuid() != 0:
            assert input_problem(path) == "cannot be read (permission denied)"
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop to an unprivileged user")
        code = ("import sys; from pathlib import Path; from bids_mrisr.bids.inputs import "
                "input_problem; print(input_problem(Path(sys.argv[1])))")
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", code, str(path)], capture_output=True, text=True, timeout=120,
            env={**os.environ, "HOME": str(folder)})
        if result.returncode != 0 and "Permission denied" in result.stderr.splitlines()[-1]:
            pytest.skip(f"user nobody cannot import the package here: {result.stderr[-200:]}")
        assert result.stdout.strip() == "cannot be read (permission denied)", result.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_field_of_view_too_large_for_mem_is_refused_with_an_estimate(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    write_volume(root / BAD, phantom_volume((64, 64, 64)), zooms=(4.0, 4.0, 4.0))
    need = minimum_peak_gb(256**3)
    mem = round(need - 0.1, 2)
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--model", "interp", "--skip-bids-validation", "--mem", f"{mem}G",
                 "--output-resolution", "1"])
    assert code == 1
    captured = capsys.readouterr()
    assert f"needs about {need:.2f} GB for its 256x256x256 output grid at 1 mm even in the " \
           "smallest tiles" in captured.err
    assert f"more than --mem {mem:g} GB" in captured.err
    assert "memory" in captured.out and "bad data" not in captured.out  # a resource problem
    assert (tmp_path / "out/sub-good/anat/sub-good_res-1mm_desc-sr_T1w.nii.gz").exists()


def test_grid_that_cannot_fit_even_in_tiles_alone_exits_71(tmp_path, capsys):
    """A header declaring 3000^3 voxels: refused before its voxels are read, as a resource
    problem (not bad data), with the memory it would need."""
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    _raw_nifti(root / BAD, lambda header: None, shape=(3000, 3000, 3000))
    assert _run(root, tmp_path, "bad") == 71
    captured = capsys.readouterr()
    assert f"needs about {minimum_peak_gb(3000**3 * 3):.2f} GB for its 3000x3000x9000 output " \
           "grid at 1 mm" in captured.err
    assert "needs more memory than allowed" in captured.err
    assert "bad data" not in captured.out and "memory" in captured.out


def test_mem_below_the_untiled_need_tiles_the_engine(tmp_path, capsys):
    """--mem just above the least a 128x128x120 grid needs: the student restores its 128x120
    slices in tiles (the sidecar records their size) instead of the run being refused."""
    import json

    from bids_mrisr.sr.checkpoint import verify_checkpoint
    from bids_mrisr.sr.planning import activation_bytes_per_pixel
    from bids_mrisr.sr.weights import default_weights

    voxels = 128 * 128 * 120  # 3 mm slices along the last axis, restored on a 1 mm grid
    root = make_dataset(tmp_path / "bids", {GOOD: phantom_volume((128, 128, 40))})
    mem = round(minimum_peak_gb(voxels) + 0.001, 3)
    _, config, _ = verify_checkpoint(default_weights("student"))
    one_slice_gb = activation_bytes_per_pixel(config) * 128 * 120 / 1e9
    assert mem < minimum_peak_gb(voxels) + one_slice_gb  # one untiled slice would not fit
    code = main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--skip-bids-validation", "--mem", f"{mem}G", "--nprocs", "1"])
    assert code == 0, capsys.readouterr().err
    sidecar = next((tmp_path / "out/sub-good/anat").glob("*_T1w.json"))
    tiles = json.loads(sidecar.read_text())["SuperResolution"]["TileSize"]
    assert tiles and all(size is not None and size < 120 for size in tiles.values()), tiles


def test_parallel_runs_are_capped_so_each_share_of_mem_fits(tmp_path):
    """--nprocs 2 with --mem for one run's least: the runs go one after another (each share
    of --mem must still fit its grid in the smallest tiles); twice that: side by side."""
    from bids_mrisr.bids.layout import discover_runs
    from bids_mrisr.cli.graph import _parallel_jobs
    from bids_mrisr.cli.parser import build_settings

    root = make_dataset(tmp_path / "bids", {
        f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz": phantom_volume((128, 128, 40)) for i in (1, 2)})
    runs = discover_runs(root)
    need = minimum_peak_gb(128 * 128 * 120)
    jobs = {}
    for mem in (need * 1.5, need * 2.1):
        settings = build_settings([str(root), str(tmp_path / "out"), "participant",
                                   "-w", str(tmp_path / "w"), "--nprocs", "2",
                                   "--mem", f"{mem:.3f}G"])
        jobs[mem] = _parallel_jobs(runs, settings)
    assert list(jobs.values()) == [1, 2], jobs


@pytest.mark.parametrize("case", ["nifti2", "oblique", "extreme-range"])
def test_unusual_but_valid_inputs_work(case, tmp_path, capsys):
    from scipy.spatial.transform import Rotation

    root = make_dataset(tmp_path / "bids", {GOOD: None})
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    data = phantom_volume()
    (root / BAD).parent.mkdir(parents=True)
    if case == "nifti2":
        image = nib.Nifti2Image(data, affine)
    elif case == "oblique":
        affine[:3, :3] = Rotation.from_euler("x", 20, degrees=True).as_matrix() @ affine[:3, :3]
        image = nib.Nifti1Image(data, affine)
    else:
        image = nib.Nifti1Image(data.astype(np.float64) * 1e30, affine)
    nib.save(image, str(root / BAD))
    assert _run(root, tmp_path) == 0
    out = nib.load(str(tmp_path / "out/sub-bad/anat/sub-bad_res-1mm_desc-sr_T1w.nii.gz"))
    assert np.all(np.isfinite(out.get_fdata()))
    if case == "oblique":
        assert "is oblique (20.0 degrees" in capsys.readouterr().err
        assert np.allclose(out.affine[:3, :3] / np.linalg.norm(out.affine[:3, :3], axis=0),
                           affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)
    if case == "extreme-range":  # the output keeps the input's scale
        assert 1e31 < float(out.get_fdata().max()) < 1e34


def test_empty_subject_is_named_and_the_others_run(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    (root / "sub-empty" / "anat").mkdir(parents=True)
    (root / "participants.tsv").write_text("participant_id\nsub-good\nsub-empty\n")
    assert _run(root, tmp_path) == 0
    assert "no T1w/T2w run for sub-empty" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON (line 1)"),
    ('{"Name": "x"}', "no BIDSVersion"),
])
def test_broken_dataset_description_exits_16(tmp_path, capsys, content, message):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    (root / "dataset_description.json").write_text(content)
    assert _run(root, tmp_path) == 16
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_bids_exits_16(tmp_path, capsys):
    folder = tmp_path / "scans"
    write_volume(folder / "brain.nii.gz", phantom_volume())
    assert _run(folder, tmp_path) == 16
    assert "dataset_description.json: missing" in capsys.readouterr().err


def test_output_dir_that_cannot_be_created_exits_73(tmp_path, capsys):
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main([str(root), str(blocker / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--model", "interp", "--skip-bids-validation"])
    assert code == 73
    err = capsys.readouterr().err
    assert str(blocker / "out") in err and "Traceback" not in err


def test_full_disk_while_writing_fails_the_run_without_partial_files(tmp_path, capsys,
                                                                     monkeypatch):
    import errno

    import bids_mrisr.image.io as image_io
    from bids_mrisr.runtime.atomic import atomic_write

    def write(path, writer, suffix=".tmp"):  # the disk fills up half way through sub-bad's SR
        if "sub-bad" in str(path) and str(path).endswith(".nii.gz"):
            def half(tmp):
                writer(tmp)
                tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            return atomic_write(path, half, suffix)
        return atomic_write(path, writer, suffix)

    root = make_dataset(tmp_path / "bids", {GOOD: None, BAD: None})
    monkeypatch.setattr(image_io, "atomic_write", write)
    code = _run(root, tmp_path)
    assert code == 1
    assert "No space left on device" in capsys.readouterr().out
    out = tmp_path / "out"
    assert not list(out.glob("sub-bad/anat/*.nii*"))  # nothing partial under a real name
    assert not [p for p in out.rglob(".*.nii*")]  # no temporary left
    assert (out / "sub-good/anat/sub-good_res-1mm_desc-sr_T1w.nii.gz").exists()


def test_full_disk_before_the_graph_exits_74_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import bids_mrisr.cli.participant as participant

    def full(output_dir, bids_dir):
        raise OSError(errno.ENOSPC, "No space left on device",
                      str(output_dir / "dataset_description.json"))

    root = make_dataset(tmp_path / "bids", {GOOD: None})
    monkeypatch.setattr(participant, "init_derivatives_dataset", full)
    assert _run(root, tmp_path) == 74
    err = capsys.readouterr().err
    assert "dataset_description.json: No space left on device" in err


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


def test_teacher_without_weights_is_clear_error(tmp_path, capsys, monkeypatch):
    # an installation without teacher weights (whatever this checkout ships)
    monkeypatch.setattr("bids_mrisr.sr.weights.PACKAGE_WEIGHTS", tmp_path / "no-weights")
    monkeypatch.delenv("BIDS_MRISR_WEIGHTS_DIR", raising=False)
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


def test_debug_shows_the_traceback_that_the_default_keeps_in_the_crash_file(tmp_path, capsys,
                                                                             monkeypatch):
    import bids_mrisr.interfaces.superres as superres

    def broken(*_args, **_kwargs):
        raise ValueError("something deep went wrong")

    monkeypatch.setattr(superres, "super_resolve", broken)
    root = make_dataset(tmp_path / "bids", {GOOD: None})
    args = [str(root), str(tmp_path / "out"), "participant", "--model", "interp",
            "--skip-bids-validation", "--nprocs", "1"]
    assert main([*args, "-w", str(tmp_path / "w1")]) == 1
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet and "something deep went wrong" in quiet
    assert main([*args, "-w", str(tmp_path / "w2"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_voxels_are_read_once_per_file_version(tmp_path) -> None:
    """The checks and the skull-strip estimate share one read; a rewritten file is read again."""
    from bids_mrisr.bids import inputs

    path = tmp_path / "sub-01_T1w.nii.gz"
    write_volume(path, phantom_volume())
    before = inputs._facts.cache_info().misses
    assert input_problem(path) is None
    inputs.looks_skull_stripped(path)
    assert inputs.load_header(path) is inputs.load_header(path)
    assert inputs._facts.cache_info().misses == before + 1
    time.sleep(0.05)  # past the file system's timestamp granularity
    write_volume(path, _nan_volume(), dtype=np.float32)  # same name, new content
    assert input_problem(path) == "contains 1 non-finite (NaN/Inf) voxel(s)"
    assert inputs._facts.cache_info().misses == before + 2
