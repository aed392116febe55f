"""``bids_mrisr train`` end to end with tiny networks on a phantom dataset."""

from __future__ import annotations

import json

import numpy as np

from bids_mrisr.cli.run import main
from bids_mrisr.sr.checkpoint import load_checkpoint
from tests.conftest import make_dataset, phantom_volume, write_volume


def _dataset(tmp_path):
    root = make_dataset(tmp_path / "bids", {})
    for index, label in enumerate(("01", "02", "03")):
        write_volume(root / f"sub-{label}/anat/sub-{label}_T1w.nii.gz",
                     phantom_volume((40, 44, 40), seed=index), zooms=(1.0, 1.0, 1.0))
    write_volume(root / "sub-lo/anat/sub-lo_T1w.nii.gz", phantom_volume((20, 22, 20)),
                 zooms=(2.0, 2.0, 2.0))
    return root


def test_train_regression_recipe_writes_a_mean_student(tmp_path):
    root = _dataset(tmp_path)
    out = tmp_path / "train"
    code = main(["train", str(root), str(out), "--no-bundled", "--preset", "tiny",
                 "--validation-label", "03", "--student-steps", "30", "--batch-size", "2",
                 "--crop", "32"])
    assert code == 0
    student = load_checkpoint(out / "student")
    assert student.config.kind == "student" and student.config.prediction_type == "mean"
    prov = student.provenance
    assert prov["recipe"] == "regression" and prov["steps"] == 30
    assert prov["training"]["steps"] == 30 and prov["training"]["crop"] == 32  # the recipe
    assert prov["training"]["factor_range"] == [1.5, 5.0]
    assert prov["degradation"]["zoom_range"] == [1.0, 1.0]  # scale augmentation off
    assert prov["degradation"]["multi_axis_rate"] == 0.0
    assert prov["sampling_steps"] == 1
    assert prov["validation_volumes"] == ["sub-03/anat/sub-03_T1w.nii.gz"]
    assert "--student-steps 30" in prov["command"]
    assert np.isfinite(prov["metrics"]["psnr_model"])
    assert not (out / "teacher").exists()


def test_train_init_weights_fine_tunes_a_checkpoint(tmp_path, capsys):
    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2", "--crop", "32"]
    assert main(["train", str(root), str(tmp_path / "a"), *common, "--student-steps", "20"]) == 0
    first = load_checkpoint(tmp_path / "a" / "student")
    code = main(["train", str(root), str(tmp_path / "b"), *common, "--student-steps", "0",
                 "--init-weights", str(tmp_path / "a" / "student"), "--lr", "1e-4"])
    assert code == 0
    second = load_checkpoint(tmp_path / "b" / "student")
    assert second.provenance["init_weights"]["sha256"] == first.sha256
    assert second.provenance["init_weights"]["steps"] == 20
    assert second.provenance["lr"] == 1e-4
    # zero further steps: the fine-tuned copy is the starting checkpoint, weight for weight
    for name, tensor in first.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), second.model.state_dict()[name].numpy()), name
    # --acquisition-input: the blind checkpoint gains the input, at zero, weights otherwise kept
    code = main(["train", str(root), str(tmp_path / "c"), *common, "--student-steps", "0",
                 "--init-weights", str(tmp_path / "a" / "student"), "--acquisition-input"])
    assert code == 0
    third = load_checkpoint(tmp_path / "c" / "student")
    assert first.config.acquisition_features == 0 and third.config.acquisition_features == 3
    state = third.model.state_dict()
    assert not state.pop("unet.acquisition.weight").any()
    assert not state.pop("unet.acquisition.bias").any()
    assert state.keys() == first.model.state_dict().keys()


def test_train_res_blocks_deepens_a_checkpoint_that_starts_computing_the_same(tmp_path,
                                                                              capsys):
    import torch

    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2", "--crop", "32"]
    assert main(["train", str(root), str(tmp_path / "a"), *common, "--student-steps", "20"]) == 0
    assert main(["train", str(root), str(tmp_path / "b"), *common, "--student-steps", "0",
                 "--init-weights", str(tmp_path / "a" / "student"), "--res-blocks", "2"]) == 0
    first = load_checkpoint(tmp_path / "a" / "student")
    deeper = load_checkpoint(tmp_path / "b" / "student")
    assert first.config.num_res_blocks == 1 and deeper.config.num_res_blocks == 2
    assert deeper.provenance["init_weights"]["added_res_blocks"] == 1
    state = deeper.model.state_dict()
    assert set(first.model.state_dict()) < set(state)
    for name, tensor in first.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), state[name].numpy()), name
    assert not state["unet.enc.0.1.conv2.weight"].any() and state["unet.dec.1.1.conv1.weight"].any()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 24, 28, generator=gen)
    cond = torch.randn(2, first.config.in_condition_channels, 24, 28, generator=gen)
    t = torch.zeros(2)
    with torch.no_grad():
        assert torch.equal(first.model(x, cond, t), deeper.model(x, cond, t))
    # shallower than the checkpoint, or for the diffusion recipe: refused before any work
    assert main(["train", str(root), str(tmp_path / "c"), *common, "--init-weights",
                 str(tmp_path / "b" / "student"), "--res-blocks", "1"]) == 64
    assert "--res-blocks 1: fewer than the 2 of --init-weights" in capsys.readouterr().err
    assert main(["train", str(root), str(tmp_path / "c"), *common, "--recipe", "diffusion",
                 "--res-blocks", "2"]) == 64
    assert not (tmp_path / "c").exists()


def test_train_moe_recipe_writes_a_mean_teacher_and_upcycles_a_student(tmp_path):
    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2", "--crop", "32",
              "--validation-label", "03"]
    assert main(["train", str(root), str(tmp_path / "m"), *common, "--recipe", "moe",
                 "--student-steps", "10", "--router-top-k", "1", "--zoom-augment", "0.8",
                 "--multi-axis-rate", "0.5", "--profiles", "box"]) == 0
    teacher = load_checkpoint(tmp_path / "m" / "teacher")
    assert teacher.config.kind == "teacher" and teacher.config.prediction_type == "mean"
    assert teacher.config.router_top_k == 1 and teacher.config.acquisition_features == 3
    prov = teacher.provenance
    assert prov["recipe"] == "moe" and prov["steps"] == 10
    assert prov["degradation"]["zoom_range"] == [0.8, 1.0]
    assert prov["degradation"]["multi_axis_rate"] == 0.5
    assert prov["degradation"]["profiles"] == ["box"] and prov["training"]["profiles"] == ["box"]
    assert isinstance(prov["gates"]["beats_uniform"], bool)
    assert not (tmp_path / "m" / "student").exists()
    # a student's copies start the experts (sparse upcycling)
    assert main(["train", str(root), str(tmp_path / "s"), *common, "--student-steps",
                 "5"]) == 0
    student = load_checkpoint(tmp_path / "s" / "student")
    assert main(["train", str(root), str(tmp_path / "u"), *common, "--recipe", "moe",
                 "--student-steps", "0", "--init-weights", str(tmp_path / "s" / "student")]) == 0
    upcycled = load_checkpoint(tmp_path / "u" / "teacher")
    assert upcycled.provenance["init_weights"]["sha256"] == student.sha256
    assert upcycled.config.base_width == student.config.base_width
    state = upcycled.model.state_dict()
    for name, tensor in student.model.unet.state_dict().items():
        if "in_conv.weight" not in name:
            assert np.array_equal(state[f"experts.1.unet.{name}"].numpy(), tensor.numpy()), name


def test_train_init_weights_refuses_what_it_cannot_fine_tune(tmp_path, capsys):
    from bids_mrisr.sr.checkpoint import random_checkpoint
    from bids_mrisr.sr.networks.config import ModelConfig

    root = _dataset(tmp_path)
    random_checkpoint(tmp_path / "teacher", ModelConfig.tiny_teacher())
    code = main(["train", str(root), str(tmp_path / "out"), "--no-bundled",
                 "--init-weights", str(tmp_path / "teacher")])
    assert code == 64
    assert "regression recipe fine-tunes posterior-mean networks" in capsys.readouterr().err
    code = main(["train", str(root), str(tmp_path / "out"), "--no-bundled",
                 "--init-weights", str(tmp_path / "nothing")])
    assert code == 64
    assert "--init-weights" in capsys.readouterr().err
    assert not (tmp_path / "out" / "student").exists()


def test_train_writes_teacher_and_distilled_student(tmp_path):
    root = _dataset(tmp_path)
    out = tmp_path / "train"
    code = main(["train", str(root), str(out), "--no-bundled", "--preset", "tiny",
                 "--recipe", "diffusion",
                 "--validation-label", "03", "--teacher-minutes", "0.05",
                 "--distill-minutes", "0.05", "--teacher-steps", "4", "--batch-size", "2"])
    assert code == 0
    teacher = load_checkpoint(out / "teacher")
    student = load_checkpoint(out / "student")
    assert teacher.config.kind == "teacher" and student.config.kind == "student"
    assert student.provenance["distilled_from"] == teacher.sha256
    assert student.provenance["sampling_steps"] == 2
    meta = json.loads((out / "teacher" / "model.json").read_text())["provenance"]
    assert meta["trained"] is True
    assert meta["validation_volumes"] == ["sub-03/anat/sub-03_T1w.nii.gz"]
    assert "sub-lo/anat/sub-lo_T1w.nii.gz" not in meta["training_volumes"]  # 2 mm: no truth
    assert np.isfinite(meta["metrics"]["psnr_model"])


def test_train_output_inside_bids_dir_is_refused(tmp_path):
    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": None})
    assert main(["train", str(root), str(root / "derivatives" / "train"), "--no-bundled"]) == 64


def test_train_unknown_validation_label_and_bad_option_are_usage_errors(tmp_path, capsys):
    root = _dataset(tmp_path)
    out = tmp_path / "train"
    assert main(["train", str(root), str(out), "--no-bundled", "--validation-label",
                 "nobody"]) == 64
    assert "--validation-label nobody: no such subject" in capsys.readouterr().err
    assert main(["train", str(root), str(out), "--student-steps", "many"]) == 64
    assert main(["train", str(root), str(out), "--zoom-augment", "0.3"]) == 64
    assert "--zoom-augment: must be between 0.5 and 1, got 0.3" in capsys.readouterr().err
    assert main(["train", str(root), str(out), "--multi-axis-rate", "1.5"]) == 64
    assert "--multi-axis-rate: must be between 0 and 1, got 1.5" in capsys.readouterr().err
    assert main(["train", str(root), str(out), "--recipe", "diffusion", "--zoom-augment",
                 "0.8"]) == 64
    assert "regression and moe recipes only" in capsys.readouterr().err
    assert main(["train", str(root), str(out), "--recipe", "diffusion", "--profiles",
                 "box"]) == 64
    assert "regression and moe recipes only" in capsys.readouterr().err
    assert main(["train", str(root), str(out), "--profiles", "lorentzian"]) == 64
    assert "invalid choice: 'lorentzian'" in capsys.readouterr().err
    assert not (out / "student").exists()


def test_train_moe_recipe_refuses_more_experts_per_token_than_it_has(tmp_path, capsys):
    root = _dataset(tmp_path)
    code = main(["train", str(root), str(tmp_path / "m"), "--no-bundled", "--preset", "tiny",
                 "--recipe", "moe", "--router-top-k", "4"])
    assert code == 64
    err = capsys.readouterr().err
    assert "--recipe moe" in err and "router_top_k" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "work").exists()  # refused before any preprocessing
