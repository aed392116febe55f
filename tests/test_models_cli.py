"""CLI runs of tiny random teacher and student checkpoints: outputs, sidecars, validator."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.bids.validator import validate_dataset
from bids_mrisr.cli.run import main
from bids_mrisr.sr.checkpoint import random_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "teacher": (root / "teacher", random_checkpoint(root / "teacher",
                                                        ModelConfig.tiny_teacher())),
        "student": (root / "student", random_checkpoint(root / "student",
                                                        ModelConfig.tiny_student())),
    }


@pytest.fixture
def small_dataset(tmp_path):
    return make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None,
                                            "sub-01/anat/sub-01_T2w.nii.gz": None})


def _run(bids, tmp_path, model, weights, *extra):
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--nprocs",
                 "1", "--model", model, "--weights", str(weights), "--steps", "2", *extra])
    return code, out


def test_teacher_writes_gates_uncertainty_and_is_validator_clean(small_dataset, tmp_path,
                                                                 checkpoints):
    weights, sha = checkpoints["teacher"]
    code, out = _run(small_dataset, tmp_path, "teacher", weights, "--num-samples", "2")
    assert code == 0
    anat = out / "sub-01" / "anat"
    for suffix in ("T1w", "T2w"):
        sr = nib.load(str(anat / f"sub-01_res-1mm_desc-sr_{suffix}.nii.gz"))
        gates = nib.load(str(anat / f"sub-01_res-1mm_desc-{suffix}gates_probseg.nii.gz"))
        std = nib.load(str(anat / f"sub-01_res-1mm_desc-srstd_{suffix}.nii.gz"))
        assert gates.shape == (*sr.shape, 3)
        np.testing.assert_allclose(gates.get_fdata().sum(axis=-1), 1.0, atol=1e-4)
        assert std.shape == sr.shape and std.get_fdata().min() >= 0
        meta = json.loads((anat / f"sub-01_res-1mm_desc-sr_{suffix}.json").read_text())
        info = meta["SuperResolution"]
        assert info["WeightsSHA256"] == sha
        assert (info["SamplingSteps"], info["Seed"], info["Device"]) == (2, 0, "cpu")
        gates_meta = json.loads(
            (anat / f"sub-01_res-1mm_desc-{suffix}gates_probseg.json").read_text())
        assert len(gates_meta["ExpertNames"]) == 3
    assert [i for i in validate_dataset(out) if i.severity == "error"] == []


def test_student_run_has_no_gates(small_dataset, tmp_path, checkpoints):
    weights, sha = checkpoints["student"]
    code, out = _run(small_dataset, tmp_path, "student", weights, "--participant-label", "01")
    assert code == 0
    anat = out / "sub-01" / "anat"
    assert (anat / "sub-01_res-1mm_desc-sr_T1w.nii.gz").exists()
    assert not list(anat.glob("*probseg*")) and not list(anat.glob("*srstd*"))
    meta = json.loads((anat / "sub-01_res-1mm_desc-sr_T1w.json").read_text())
    assert meta["SuperResolution"]["WeightsSHA256"] == sha


def test_seed_makes_runs_identical(small_dataset, tmp_path, checkpoints):
    weights, _ = checkpoints["student"]
    results = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        code = main([str(small_dataset), str(out), "participant",
                     "-w", str(tmp_path / f"w{attempt}"), "--model", "student",
                     "--weights", str(weights), "--seed", "5", "--nprocs", "1",
                     "--skip-bids-validation"])
        assert code == 0
        results.append(nib.load(str(out / "sub-01/anat/sub-01_res-1mm_desc-sr_T1w.nii.gz"))
                       .get_fdata())
    np.testing.assert_array_equal(results[0], results[1])


def test_wrong_kind_and_corrupt_checkpoint_are_usage_errors(small_dataset, tmp_path,
                                                            checkpoints, capsys):
    weights, _ = checkpoints["student"]
    code, _ = _run(small_dataset, tmp_path, "teacher", weights)
    assert code == 64
    assert "student checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    code, _ = _run(small_dataset, tmp_path, "student", broken)
    assert code == 64
    assert str(broken) in capsys.readouterr().err


def test_a_memory_budget_that_cannot_fit_is_refused_before_any_work(small_dataset, tmp_path,
                                                                     checkpoints, capsys):
    weights, _ = checkpoints["teacher"]
    code, out = _run(small_dataset, tmp_path, "teacher", weights, "--mem", "1MB",
                     "--participant-label", "01", "--skip-bids-validation")
    assert code == 71  # the only selected run cannot fit even in tiles: refused up front
    err = capsys.readouterr().err
    assert "needs about 0.5" in err and "even in the smallest tiles" in err
    assert "more than --mem" in err and "bad data" not in err
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").rglob("n4.nii"))


def test_failure_inside_the_workflow_is_one_line_without_traceback(small_dataset, tmp_path,
                                                                    checkpoints, capsys,
                                                                    monkeypatch):
    import bids_mrisr.interfaces.superres as superres
    from bids_mrisr.sr.options import SRError

    def too_small(*_args, **_kwargs):  # as the engine's tile planner says when it cannot fit
        raise SRError("memory budget 0.3 GB is too small for this volume (needs at least "
                      "0.42 GB)")

    monkeypatch.setattr(superres, "super_resolve", too_small)
    weights, _ = checkpoints["teacher"]
    code, out = _run(small_dataset, tmp_path, "teacher", weights,
                     "--participant-label", "01", "--skip-bids-validation")
    assert code == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "memory budget" in line]
    assert errors and "sub-01_T1w.nii.gz" in errors[0] and "crash-" in errors[0]
    assert "failed" in captured.out  # the summary table
    assert not list(out.rglob("*_desc-sr_*.nii.gz"))
    logs = list((out / "sub-01" / "log").glob("*/bids_mrisr.log"))
    assert logs and "memory budget" in logs[0].read_text()


def test_mean_student_runs_once_in_the_planes_that_contain_the_thick_axis(small_dataset,
                                                                          tmp_path):
    import dataclasses

    config = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    sha = random_checkpoint(tmp_path / "mean", config)
    code, out = _run(small_dataset, tmp_path, "student", tmp_path / "mean")
    assert code == 0
    anat = out / "sub-01" / "anat"
    meta = json.loads((anat / "sub-01_res-1mm_desc-sr_T1w.json").read_text())
    info = meta["SuperResolution"]
    assert info["WeightsSHA256"] == sha
    assert info["Sampler"] == "direct posterior-mean regression"
    assert info["SamplingSteps"] == 1  # --steps 2 does not apply to a mean regressor
    assert info["RestoredAxes"] == [2]  # the phantom is 1 x 1 x 3 mm
    assert info["Planes"] == ["coronal", "sagittal"]
    assert info["BiasFieldRestored"] is True


def test_adapt_auto_fine_tunes_anisotropic_runs_and_skips_isotropic_ones(tmp_path, capsys):
    import dataclasses

    from tests.conftest import phantom_volume, write_volume

    config = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    sha = random_checkpoint(tmp_path / "mean", config)
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    write_volume(bids / "sub-02/anat/sub-02_T1w.nii.gz", phantom_volume((24, 24, 24)),
                 zooms=(1.0, 1.0, 1.0))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    code, out = _run(bids, tmp_path, "student", tmp_path / "mean", "--adapt", "auto",
                     "--adapt-steps", "5", "--slice-profile", "box")
    assert code == 0
    meta = json.loads((out / "sub-01/anat/sub-01_res-1mm_desc-sr_T1w.json").read_text())
    adaptation = meta["SuperResolution"]["Adaptation"]
    assert adaptation["Status"] == "adapted" and adaptation["Steps"] == 5
    assert adaptation["SliceProfile"] == "box (given)"  # --slice-profile reached the engine
    assert adaptation["StartWeightsSHA256"] == sha and adaptation["Seconds"] > 0
    assert "sub-02_T1w.nii.gz: voxels 1x1x1 mm are not anisotropic enough" in (
        capsys.readouterr().err)
    iso = json.loads((out / "sub-02/anat/sub-02_res-1mm_T1w.json").read_text())  # resampled only
    assert "Adaptation" not in iso["SuperResolution"]
    assert "already" in iso["SuperResolution"]["Restored"]  # 1 mm in, 1 mm out


def test_adapt_auto_runs_on_a_mean_teacher_and_is_refused_for_interp(tmp_path, capsys):
    import dataclasses

    config = dataclasses.replace(ModelConfig.tiny_teacher(), prediction_type="mean",
                                 router_top_k=2)
    sha = random_checkpoint(tmp_path / "moe", config)
    bids = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    code, out = _run(bids, tmp_path, "teacher", tmp_path / "moe", "--adapt", "auto",
                     "--adapt-steps", "3")
    assert code == 0
    info = json.loads((out / "sub-01/anat/sub-01_res-1mm_desc-sr_T1w.json").read_text())[
        "SuperResolution"]
    assert info["Adaptation"]["Status"] == "adapted"
    assert info["Adaptation"]["StartWeightsSHA256"] == sha
    assert (out / "sub-01/anat/sub-01_res-1mm_desc-T1wgates_probseg.nii.gz").is_file()
    code = main([str(bids), str(tmp_path / "out2"), "participant", "--model", "interp",
                 "--adapt", "auto"])
    assert code == 64
    assert "--adapt auto needs a network" in capsys.readouterr().err


def test_weights_variants_are_checked_up_front_and_key_the_cache(tmp_path, small_dataset,
                                                                       capsys):
    from types import SimpleNamespace

    from bids_mrisr.cli.participant import resolve_weights
    from bids_mrisr.errors import UserError
    from bids_mrisr.sr.variants import BOX_WEIGHTS, MULTI_AXIS_WEIGHTS

    weights = tmp_path / "student"
    sha = random_checkpoint(weights, ModelConfig.tiny_student(), seed=0)
    settings = SimpleNamespace(model="student", device="cpu", weights=weights, adapt="off")

    def key() -> tuple:
        verified = resolve_weights(settings)
        return verified.path, "+".join(sha for _, sha in verified.digests)

    assert key() == (weights, sha)
    variant_sha = random_checkpoint(weights / MULTI_AXIS_WEIGHTS, ModelConfig.tiny_student(),
                                    seed=1)
    # new weights of the variant alone must invalidate the cached SR results
    assert key() == (weights, f"{sha}+{variant_sha}")
    assert resolve_weights(settings).digests == (("", sha), (MULTI_AXIS_WEIGHTS, variant_sha))
    random_checkpoint(weights / MULTI_AXIS_WEIGHTS, ModelConfig.tiny_teacher(), seed=1)
    with pytest.raises(UserError, match="a teacher checkpoint inside a student one"):
        resolve_weights(settings)
    random_checkpoint(weights / MULTI_AXIS_WEIGHTS, ModelConfig.tiny_student(), seed=1)
    (weights / MULTI_AXIS_WEIGHTS / "model.safetensors").write_bytes(b"corrupt")
    code, out = _run(small_dataset, tmp_path, "student", weights)
    assert code == 64
    err = capsys.readouterr().err
    assert MULTI_AXIS_WEIGHTS in err and "Traceback" not in err
    assert not (out / "sub-01").exists()  # refused before any work
    (weights / MULTI_AXIS_WEIGHTS / "model.safetensors").unlink()
    (weights / MULTI_AXIS_WEIGHTS / "model.json").unlink()
    box_sha = random_checkpoint(weights / BOX_WEIGHTS, ModelConfig.tiny_student(), seed=2)
    assert key() == (weights, f"{sha}+{box_sha}")


def test_the_engine_loads_the_chosen_weights_once_and_rehashes_none_it_was_given(
        tmp_path, monkeypatch):
    """The app hashes every checkpoint and variant once, up front; the engine then loads only
    the variant it picks and checks its manifest against the digest, without hashing."""
    import safetensors.torch

    from bids_mrisr.sr import checkpoint
    from bids_mrisr.sr.inference import run_model
    from bids_mrisr.sr.options import SRError, SROptions
    from bids_mrisr.sr.variants import BOX_WEIGHTS, verify_with_variants

    weights = tmp_path / "student"
    random_checkpoint(weights, ModelConfig.tiny_student(), seed=0)
    random_checkpoint(weights / BOX_WEIGHTS, ModelConfig.tiny_student(), seed=2)
    verified = verify_with_variants(weights)
    calls = {"hash": 0, "load": 0}
    hash_file, load_file = checkpoint.sha256_file, safetensors.torch.load_file

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(checkpoint, "sha256_file", counted("hash", hash_file))
    monkeypatch.setattr(safetensors.torch, "load_file", counted("load", load_file))
    volume = np.random.default_rng(0).random((12, 12, 12), dtype=np.float32)
    options = SROptions(weights=weights, weights_sha256=verified.digests, device="cpu",
                        blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0), slice_profile="box",
                        flip_views=1, input_consistency=False)
    info = run_model(volume, options).info
    assert info["ModelName"] == "student/box"
    assert info["WeightsSHA256"] == dict(verified.digests)[BOX_WEIGHTS]
    assert calls == {"hash": 0, "load": 1}
    run_model(volume, dataclasses.replace(options, weights_sha256=()))  # a plain engine call
    assert calls == {"hash": 1, "load": 2}  # verifies what it loads, once
    random_checkpoint(weights / BOX_WEIGHTS, ModelConfig.tiny_student(), seed=3)
    with pytest.raises(SRError, match="changed since the run verified it"):
        run_model(volume, options)
