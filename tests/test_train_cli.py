"""``bids_mrisr train`` end to end with tiny networks on a phantom dataset."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bids_mrisr.cli.run import main
from bids_mrisr.sr.checkpoint import load_checkpoint
from bids_mrisr.sr.networks.config import ModelConfig
from tests.conftest import make_dataset, phantom_volume, write_volume


def _dataset(tmp_path):
    root = make_dataset(tmp_path / "bids", {})
    for index, label in enumerate(("01", "02", "03")):
        write_volume(root / f"sub-{label}/anat/sub-{label}_T1w.nii.gz",
                     phantom_volume((40, 44, 40), seed=index), zooms=(1.0, 1.0, 1.0))
    write_volume(root / "sub-lo/anat/sub-lo_T1w.nii.gz", phantom_volume((20, 22, 20)),
                 zooms=(2.0, 2.0, 2.0))
    return root


def _recipe_file(tmp_path, text: str, name: str = "recipe.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_train_regression_recipe_writes_a_mean_student(tmp_path):
    root = _dataset(tmp_path)
    out = tmp_path / "train"
    recipe = _recipe_file(tmp_path, "crop = 32  # the tiny phantom's heads\n")
    code = main(["train", str(root), str(out), "--no-bundled", "--preset", "tiny",
                 "--validation-label", "03", "--student-steps", "30", "--batch-size", "2",
                 "--recipe-file", recipe])
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
    # every value the regression recipe used, from the file or a default (none of moe's)
    assert prov["recipe_file"] == recipe
    assert prov["recipe_options"] == {"lr": 2e-3, "crop": 32, "factor_range": [1.5, 5.0],
                                      "zoom_augment": 1.0, "multi_axis_rate": 0.0,
                                      "profiles": ["gaussian", "box"], "res_blocks": None,
                                      "channel_mults": None}
    assert np.isfinite(prov["metrics"]["psnr_model"])
    assert not (out / "teacher").exists()


def test_train_init_weights_fine_tunes_a_checkpoint(tmp_path, capsys):
    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2"]
    crop = ["--recipe-file", _recipe_file(tmp_path, "crop = 32")]
    assert main(["train", str(root), str(tmp_path / "a"), *common, *crop,
                 "--student-steps", "20"]) == 0
    first = load_checkpoint(tmp_path / "a" / "student")
    code = main(["train", str(root), str(tmp_path / "b"), *common, "--student-steps", "0",
                 "--init-weights", str(tmp_path / "a" / "student"), "--recipe-file",
                 _recipe_file(tmp_path, "crop = 32\nlr = 1e-4", "fine-tune.toml")])
    assert code == 0
    second = load_checkpoint(tmp_path / "b" / "student")
    assert second.provenance["init_weights"]["sha256"] == first.sha256
    assert second.provenance["init_weights"]["steps"] == 20
    assert second.provenance["lr"] == 1e-4 and second.provenance["recipe_options"]["lr"] == 1e-4
    # zero further steps: the fine-tuned copy is the starting checkpoint, weight for weight
    for name, tensor in first.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), second.model.state_dict()[name].numpy()), name
    # --acquisition-input: the blind checkpoint gains the input, at zero, weights otherwise kept
    code = main(["train", str(root), str(tmp_path / "c"), *common, *crop, "--student-steps",
                 "0", "--init-weights", str(tmp_path / "a" / "student"), "--acquisition-input"])
    assert code == 0
    third = load_checkpoint(tmp_path / "c" / "student")
    assert first.config.acquisition_features == 0 and third.config.acquisition_features == 3
    state = third.model.state_dict()
    assert not state.pop("unet.acquisition.weight").any()
    assert not state.pop("unet.acquisition.bias").any()
    assert state.keys() == first.model.state_dict().keys()
    # --scan-input: the told checkpoint's code widens by two entries that start unheard
    code = main(["train", str(root), str(tmp_path / "d"), *common, *crop, "--student-steps",
                 "0", "--init-weights", str(tmp_path / "c" / "student"), "--scan-input"])
    assert code == 0
    fourth = load_checkpoint(tmp_path / "d" / "student")
    assert fourth.config.acquisition_features == 5
    widened = fourth.model.state_dict()["unet.acquisition.weight"]
    assert widened.shape[1] == 5 and not widened[:, 3:].any()


def test_train_res_blocks_deepens_a_checkpoint_that_starts_computing_the_same(tmp_path,
                                                                              capsys):
    import torch

    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2"]
    assert main(["train", str(root), str(tmp_path / "a"), *common, "--student-steps", "20",
                 "--recipe-file", _recipe_file(tmp_path, "crop = 32")]) == 0
    deepen = _recipe_file(tmp_path, "crop = 32\nres_blocks = 2", "deeper.toml")
    assert main(["train", str(root), str(tmp_path / "b"), *common, "--student-steps", "0",
                 "--init-weights", str(tmp_path / "a" / "student"), "--recipe-file",
                 deepen]) == 0
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
    # shallower than the checkpoint, or for the moe recipe: refused before any work
    assert main(["train", str(root), str(tmp_path / "c"), *common, "--init-weights",
                 str(tmp_path / "b" / "student"), "--recipe-file",
                 _recipe_file(tmp_path, "res_blocks = 1", "shallower.toml")]) == 64
    assert "res_blocks 1: fewer than the 2 of --init-weights" in capsys.readouterr().err
    assert main(["train", str(root), str(tmp_path / "c"), *common, "--recipe", "moe",
                 "--recipe-file", deepen]) == 64
    assert (f"{deepen}: res_blocks applies to --recipe regression, not --recipe moe"
            in capsys.readouterr().err)
    assert not (tmp_path / "c").exists()


def test_train_channel_mults_shapes_a_new_student_only(tmp_path, capsys):
    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2", "--student-steps", "4"]
    levels = _recipe_file(tmp_path, "crop = 32\nchannel_mults = [1, 2, 2]", "levels.toml")
    assert main(["train", str(root), str(tmp_path / "a"), *common, "--recipe-file",
                 levels]) == 0
    three = load_checkpoint(tmp_path / "a" / "student")
    assert three.config.channel_mults == (1, 2, 2)  # the tiny preset has two levels
    assert three.provenance["recipe_options"]["channel_mults"] == [1, 2, 2]
    assert any(name.startswith("unet.down.1") for name in three.model.state_dict())
    # a checkpoint keeps its shape: refused before any work
    assert main(["train", str(root), str(tmp_path / "b"), *common, "--init-weights",
                 str(tmp_path / "a" / "student"), "--recipe-file", levels]) == 64
    assert "channel_mults shapes a new student" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_train_moe_recipe_writes_a_mean_teacher_and_upcycles_a_student(tmp_path):
    root = _dataset(tmp_path)
    common = ["--no-bundled", "--preset", "tiny", "--batch-size", "2", "--validation-label",
              "03", "--recipe-file", _recipe_file(tmp_path, "crop = 32")]
    experiment = _recipe_file(tmp_path, "crop = 32\nrouter_top_k = 1\nzoom_augment = 0.8\n"
                                        "multi_axis_rate = 0.5\nprofiles = ['box']", "moe.toml")
    assert main(["train", str(root), str(tmp_path / "m"), *common, "--recipe", "moe",
                 "--student-steps", "10", "--recipe-file", experiment]) == 0
    teacher = load_checkpoint(tmp_path / "m" / "teacher")
    assert teacher.config.kind == "teacher" and teacher.config.prediction_type == "mean"
    assert teacher.config.router_top_k == 1 and teacher.config.acquisition_features == 3
    prov = teacher.provenance
    assert prov["recipe"] == "moe" and prov["steps"] == 10
    assert prov["degradation"]["zoom_range"] == [0.8, 1.0]
    assert prov["degradation"]["multi_axis_rate"] == 0.5
    assert prov["degradation"]["profiles"] == ["box"] and prov["training"]["profiles"] == ["box"]
    assert prov["recipe_options"]["router_top_k"] == 1 and "res_blocks" not in prov[
        "recipe_options"]
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
    # several students (e.g. snapshots of one campaign) start the experts in turn
    assert main(["train", str(root), str(tmp_path / "s2"), *common, "--student-steps", "5",
                 "--seed", "1"]) == 0
    other = load_checkpoint(tmp_path / "s2" / "student")
    assert main(["train", str(root), str(tmp_path / "u2"), *common, "--recipe", "moe",
                 "--student-steps", "0", "--init-weights", str(tmp_path / "s" / "student"),
                 str(tmp_path / "s2" / "student")]) == 0
    mixed = load_checkpoint(tmp_path / "u2" / "teacher")
    record = mixed.provenance["init_weights"]
    assert [r["sha256"] for r in record["students"]] == [student.sha256, other.sha256]
    assert record["expert_students"] == [0, 1, 0]
    state = mixed.model.state_dict()
    key = "out_conv.weight"
    assert np.array_equal(state[f"experts.1.unet.{key}"].numpy(),
                          other.model.unet.state_dict()[key].numpy())
    assert np.array_equal(state[f"experts.2.unet.{key}"].numpy(),
                          student.model.unet.state_dict()[key].numpy())
    assert not np.array_equal(state[f"experts.1.unet.{key}"].numpy(),
                              state[f"experts.2.unet.{key}"].numpy())


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
    random_checkpoint(tmp_path / "s1", dataclasses.replace(ModelConfig.tiny_student(),
                                                           prediction_type="mean"))
    random_checkpoint(tmp_path / "s2", dataclasses.replace(ModelConfig.tiny_student(),
                                                           prediction_type="mean",
                                                           context_slices=1))
    code = main(["train", str(root), str(tmp_path / "out"), "--no-bundled",
                 "--init-weights", str(tmp_path / "s1"), str(tmp_path / "s1")])
    assert code == 64
    assert "only --recipe moe starts from several" in capsys.readouterr().err
    code = main(["train", str(root), str(tmp_path / "out"), "--no-bundled", "--recipe", "moe",
                 "--init-weights", str(tmp_path / "s1"), str(tmp_path / "s2")])
    assert code == 64
    err = capsys.readouterr().err  # experts may differ in width, levels and depth only
    assert f"--init-weights {tmp_path / 's2'}: not an expert beside" in err
    assert "differ in base_width, channel_mults and num_res_blocks only" in err
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
    assert meta["recipe"] == "diffusion" and meta["recipe_options"] == {}  # no key applies
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
    # an option of another recipe is named, not ignored
    assert main(["train", str(root), str(out), "--recipe", "diffusion", "--acquisition-input",
                 "--stop-after", "5", "--stop-at-step", "9"]) == 64
    assert ("--recipe diffusion does not use --acquisition-input, --stop-after, --stop-at-step "
            "(--recipe regression or moe only)" in capsys.readouterr().err)
    assert main(["train", str(root), str(out), "--teacher-minutes", "3", "--base-width", "8",
                 "--recipe", "moe"]) == 64
    assert ("--recipe moe does not use --base-width (--recipe regression only); "
            "--teacher-minutes (--recipe diffusion only)" in capsys.readouterr().err)
    # the experiment switches live in the recipe file now
    assert main(["train", str(root), str(out), "--zoom-augment", "0.8"]) == 64
    assert "unrecognized arguments: --zoom-augment" in capsys.readouterr().err
    assert not (out / "student").exists()


@pytest.mark.parametrize(("text", "recipe", "message"), [
    ("zoom_augment = 0.3", "regression", "zoom_augment: must be >= 0.5 and <= 1, got 0.3"),
    ("multi_axis_rate = 1.5", "moe", "multi_axis_rate: must be >= 0 and <= 1, got 1.5"),
    ("profiles = ['lorentzian']", "regression",
     "profiles: expected a non-empty list of gaussian, box, got ['lorentzian']"),
    ("crop = '32'", "regression", "crop: expected an integer, got '32'"),
    ("crop = 32.0", "regression", "crop: expected an integer, got 32.0"),
    ("lr = true", "regression", "lr: expected a number, got True"),
    ("factor_range = [3, 2]", "regression", "factor_range: low must not exceed high"),
    ("zoom = 0.8", "regression", "unknown key 'zoom' (recipe keys: lr, crop, factor_range, "
                                 "zoom_augment, multi_axis_rate, profiles, res_blocks, "
                                 "channel_mults, router_top_k, train_experts)"),
    ("channel_mults = [1, 0, 2]", "regression",
     "channel_mults: expected a list of 2 to 5 positive integers, got [1, 0, 2]"),
    ("channel_mults = [2]", "regression",
     "channel_mults: expected a list of 2 to 5 positive integers, got [2]"),
    ("train_experts = 0", "moe", "train_experts: expected true or false, got 0"),
    ("[training]\nlr = 1e-3", "regression", "unknown key 'training'"),
    ("zoom_augment = 0.8", "diffusion",
     "zoom_augment applies to --recipe regression or moe, not --recipe diffusion"),
    ("router_top_k = 1", "regression", "router_top_k applies to --recipe moe, not --recipe "
                                       "regression"),
    ("lr = ", "regression", "not valid TOML"),
])
def test_a_bad_recipe_file_is_one_usage_line_naming_file_and_key(tmp_path, capsys, text, recipe,
                                                                   message):
    out = tmp_path / "train"
    path = _recipe_file(tmp_path, text)
    assert main(["train", str(out), "--no-bundled", "--recipe", recipe,
                 "--recipe-file", path]) == 64
    err = capsys.readouterr().err
    assert f"{path}: {message}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any preprocessing


def test_recipe_file_defaults_and_the_shipped_example(tmp_path, capsys):
    from bids_mrisr.cli.recipe_file import RecipeOptions, read_recipe_file

    defaults = RecipeOptions()
    assert defaults.lr == 2e-3 and defaults.crop == 64 and defaults.factor_range == (1.5, 5.0)
    assert defaults.zoom_augment == 1.0 and defaults.multi_axis_rate == 0.0
    assert defaults.profiles == ("gaussian", "box") and defaults.res_blocks is None
    assert defaults.router_top_k == 2 and defaults.train_experts is True
    assert read_recipe_file(None, "moe") == defaults
    # a file sets only what it names; dashes as on the old command line are accepted
    path = _recipe_file(tmp_path, "multi-axis-rate = 0.25\nlr = 1\nprofiles = ['box', 'box']")
    assert read_recipe_file(Path(path), "regression") == RecipeOptions(
        multi_axis_rate=0.25, lr=1.0, profiles=("box",))
    assert main(["train", str(tmp_path / "o"), "--recipe-file", str(tmp_path / "none")]) == 64
    assert "none: recipe file not found" in capsys.readouterr().err
    # docs/recipes/default.toml: every key, each at its default (commented: one recipe's keys)
    example = Path(__file__).parents[1] / "docs" / "recipes" / "default.toml"
    for recipe in ("regression", "moe"):
        assert read_recipe_file(example, recipe) == defaults
    text = example.read_text()
    shown = tomllib.loads(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M))
    assert list(shown) == list(defaults.record("regression")) + ["router_top_k",
                                                                   "train_experts"]
    new_student_only = ("res_blocks", "channel_mults")
    assert ({k: v for k, v in shown.items() if k not in new_student_only}
            == defaults.record("moe"))
    assert shown["res_blocks"] == ModelConfig.student_default().num_res_blocks
    assert tuple(shown["channel_mults"]) == ModelConfig.student_default().channel_mults
    # docs/recipes/multi-axis.toml is what made the shipped multi-axis variant
    variant = read_recipe_file(example.with_name("multi-axis.toml"), "regression")
    made = load_checkpoint(Path(__file__).parents[1] / "bids_mrisr" / "data" / "weights"
                           / "student" / "multi-axis").provenance["training"]
    assert (variant.lr, variant.multi_axis_rate, variant.crop) == (
        made["lr"], made["multi_axis_rate"], made["crop"]) == (1e-4, 0.25, 64)


def test_resume_refuses_other_recipe_options_and_records_them_in_the_state(tmp_path, capsys):
    from bids_mrisr.sr.training.loop import read_state_record

    root = _dataset(tmp_path)
    out = tmp_path / "train"
    first = _recipe_file(tmp_path, "crop = 32\nmulti_axis_rate = 0.25")
    common = ["train", str(root), str(out), "--no-bundled", "--preset", "tiny",
              "--batch-size", "2", "--student-steps", "4"]
    assert main([*common, "--recipe-file", first, "--stop-after", "0"]) == 0
    record = load_checkpoint(out / "student").provenance["recipe_options"]
    assert read_state_record(out / "student" / "train_state.pt") == record
    assert record["multi_axis_rate"] == 0.25
    other = _recipe_file(tmp_path, "crop = 32", "other.toml")
    assert main([*common, "--recipe-file", other, "--resume"]) == 64
    err = capsys.readouterr().err
    assert "--resume: " in err and "multi_axis_rate 0.25 saved, 0.0 given" in err
    assert (out / "student" / "train_state.pt").is_file()
    assert main([*common, "--recipe-file", first, "--resume"]) == 0
    final = load_checkpoint(out / "student").provenance
    assert final["finished"] is True and final["steps"] == 4


def _campaign_args(run_sh: Path, **env: str):
    """The trainer's arguments as ``scripts/campaign/run.sh`` passes them with ``env`` set and
    ``MINUTES`` at 60: the script itself runs, with ``echo`` in place of Python."""
    import os
    import subprocess

    from bids_mrisr.cli.train import build_parser

    run = subprocess.run(["bash", str(run_sh), "60"], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"], **env, "PYTHON": "echo"})
    words = run.stdout.split()
    words = words[words.index("train") + 2:]
    for i in range(1, len(words)):  # run.sh runs in its folder: a recipe file is relative to it
        if words[i - 1] == "--recipe-file":
            words[i] = str(run_sh.parent / words[i])
    return build_parser().parse_args(["data", *words])


CAMPAIGNS = {  # name: (run.sh environment, network beyond the default, steps, OUT, seed, lr)
    "width-32 (finished)": ({}, {}, 150000, "out", 0, 2e-3),
    "width-48 (finished)": ({"WIDTH": "48", "STEPS": "50000", "OUT": "out-width48"},
                            {"base_width": 48}, 50000, "out-width48", 0, 2e-3),
    "width-32, seed 1 (finished)": ({"SEED": "1", "OUT": "out-seed1"}, {}, 150000,
                                    "out-seed1", 1, 2e-3),
    "width-32, seed 2 (finished)": ({"SEED": "2", "OUT": "out-seed2"}, {}, 150000,
                                    "out-seed2", 2, 2e-3),
    "four levels": ({"RECIPE": "levels4.toml", "OUT": "out-levels4"},
                    {"channel_mults": (1, 1, 2, 2)}, 150000, "out-levels4", 0, 1e-3),
    "two blocks per level": ({"RECIPE": "deep2.toml", "OUT": "out-deep2"},
                             {"num_res_blocks": 2}, 150000, "out-deep2", 0, 2e-3)}


def test_the_campaign_command_passes_a_stop_step_only_when_asked():
    scripts = Path(__file__).parents[1] / "scripts" / "campaign"
    assert _campaign_args(scripts / "run.sh").stop_at_step is None
    asked = _campaign_args(scripts / "run.sh", STOP_AT="101475", SEED="1", OUT="out-seed1")
    assert (asked.stop_at_step, asked.seed, asked.output_dir.name) == (101475, 1, "out-seed1")


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_the_campaign_command_still_builds_the_network_and_recipe_it_resumes(campaign):
    """scripts/campaign/run.sh resumes a committed state: its flags must keep building the
    same network (the state's weights load into it, key for key and shape for shape) and the
    same training recipe as when the campaign began."""
    import torch

    from bids_mrisr.cli.recipe_file import read_recipe_file
    from bids_mrisr.cli.train import network_config, regression_recipe
    from bids_mrisr.sr.checkpoint import load_checkpoint
    from bids_mrisr.sr.networks.factory import build_model
    from bids_mrisr.sr.training.regression import RegressionRecipe

    env, network, steps, out, seed, lr = CAMPAIGNS[campaign]
    scripts = Path(__file__).parents[1] / "scripts" / "campaign"
    args = _campaign_args(scripts / "run.sh", **env)
    assert args.output_dir.name == out
    options = read_recipe_file(args.recipe_file, args.recipe)
    config = network_config(args, options, False, None)
    assert config == dataclasses.replace(ModelConfig.student_default(), prediction_type="mean",
                                         acquisition_features=3, **network)
    assert regression_recipe(args, options) == RegressionRecipe(
        steps=steps, minutes=None, batch_size=16, lr=lr, seed=seed, crop=64,
        factor_range=(1.5, 5.0), device="auto", workers=0, zoom_range=(1.0, 1.0),
        multi_axis_rate=0.0, profiles=("gaussian", "box"), stop_minutes=60.0)
    # What the campaign committed: its resumable state while it runs, its final weights once
    # the schedule has finished; either must be of the network run.sh trains.
    committed = scripts / out / "student"
    state = committed / "train_state.pt"
    assert state.is_file() or (committed / "model.json").is_file()
    if state.is_file():
        saved = torch.load(state, map_location="cpu", weights_only=True)["model"]
        model = build_model(config)
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in saved.items()}
    else:
        final = load_checkpoint(committed)
        assert final.config == config and final.provenance["steps"] == steps


def test_train_moe_recipe_refuses_more_experts_per_token_than_it_has(tmp_path, capsys):
    root = _dataset(tmp_path)
    code = main(["train", str(root), str(tmp_path / "m"), "--no-bundled", "--preset", "tiny",
                 "--recipe", "moe", "--recipe-file", _recipe_file(tmp_path, "router_top_k = 4")])
    assert code == 64
    err = capsys.readouterr().err
    assert "--recipe moe" in err and "router_top_k" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "work").exists()  # refused before any preprocessing


def test_router_only_training_needs_the_experts_to_keep(tmp_path, capsys):
    root = _dataset(tmp_path)
    out = tmp_path / "frozen"
    assert main(["train", str(root), str(out), "--no-bundled", "--preset", "tiny",
                 "--recipe", "moe", "--recipe-file",
                 _recipe_file(tmp_path, "train_experts = false")]) == 64
    err = capsys.readouterr().err
    assert "train_experts = false keeps the experts as --init-weights starts them" in err
    assert "Traceback" not in err and not out.exists()


def test_train_help_keeps_the_researchers_options_and_names_the_recipe_keys():
    from bids_mrisr.cli.train import build_parser

    text = " ".join(build_parser().format_help().split())
    for flag in ("--participant-label", "--validation-label", "--max-spacing", "--no-bundled",
                 "--recipe", "--student-steps", "--student-minutes", "--teacher-steps",
                 "--teacher-minutes", "--distill-minutes", "--stop-after", "--batch-size",
                 "--seed", "--threads", "--device", "--workers", "--resume", "--init-weights",
                 "--skip-teacher", "--preset", "--acquisition-input", "--scan-input",
                 "--base-width"):
        assert flag in text, flag
    for gone in ("--res-blocks", "--zoom-augment", "--multi-axis-rate", "--profiles",
                 "--router-top-k", "--lr ", "--crop"):
        assert gone not in text, gone
    assert "Keys: lr, crop, factor_range, zoom_augment, multi_axis_rate, profiles" in text
    assert "64 usage error" in text
