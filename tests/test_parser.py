"""Command-line parsing: BIDS-App positional arguments, label forms, TOML, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bids_mrisr.cli.parser import build_parser, build_settings
from bids_mrisr.cli.run import main
from bids_mrisr.errors import ExitCode, UserError


def _settings(bids: Path, tmp_path: Path, *extra: str):
    return build_settings([str(bids), str(tmp_path / "out"), "participant",
                           "-w", str(tmp_path / "work"), *extra])


def test_labels_with_and_without_prefix_and_both_spellings(phantom_dataset, tmp_path):
    settings = _settings(phantom_dataset, tmp_path, "--participant-label", "sub-01", "02")
    assert settings.participant_labels == ("01", "02")
    settings = _settings(phantom_dataset, tmp_path, "--participant_label", "01")
    assert settings.participant_labels == ("01",)


def test_labels_from_file(phantom_dataset, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-01\n02\n\n")
    settings = _settings(phantom_dataset, tmp_path, "--participant-label", str(labels))
    assert settings.participant_labels == ("01", "02")


def test_session_labels_and_defaults(phantom_dataset, tmp_path):
    settings = _settings(phantom_dataset, tmp_path, "--session-label", "ses-a")
    assert settings.session_labels == ("a",)
    assert settings.model == "student"
    assert settings.planes == ("axial", "coronal", "sagittal")
    assert settings.output_resolution is None


def test_sr_and_execution_flags(phantom_dataset, tmp_path):
    settings = _settings(phantom_dataset, tmp_path, "--model", "interp", "--output-resolution",
                         "0.8", "--device", "cuda:1", "--seed", "7", "--mem", "8000MB",
                         "--nprocs", "3", "--omp-nthreads", "2", "--num-samples", "4",
                         "--steps", "8", "--skip-bids-validation")
    assert settings.model == "interp"
    assert settings.output_resolution == pytest.approx(0.8)
    assert settings.device == "cuda:1"
    assert settings.seed == 7
    assert settings.mem_gb == pytest.approx(8000 / 1024)
    assert (settings.nprocs, settings.omp_nthreads) == (3, 2)
    assert (settings.num_samples, settings.steps) == (4, 8)
    assert settings.skip_bids_validation is True


def test_slice_profile_flag_defaults_to_auto_and_checks_its_choices(phantom_dataset, tmp_path):
    assert _settings(phantom_dataset, tmp_path).slice_profile == "auto"
    settings = _settings(phantom_dataset, tmp_path, "--adapt", "auto", "--slice-profile", "box")
    assert (settings.adapt, settings.slice_profile) == ("auto", "box")
    assert main([str(phantom_dataset), str(tmp_path / "out"), "participant",
                 "--slice-profile", "triangle"]) == ExitCode.USAGE


def test_flip_views_flag_defaults_to_auto_and_reaches_the_engine(phantom_dataset, tmp_path):
    from bids_mrisr.workflows.base import sr_options

    settings = _settings(phantom_dataset, tmp_path)
    assert settings.flip_views == "auto" and sr_options(settings, None, 1).flip_views is None
    settings = _settings(phantom_dataset, tmp_path, "--flip-views", "4")
    assert sr_options(settings, None, 1).flip_views == 4
    assert main([str(phantom_dataset), str(tmp_path / "out"), "participant",
                 "--flip-views", "3"]) == ExitCode.USAGE


def test_input_consistency_flag_defaults_to_auto_and_reaches_the_engine(phantom_dataset,
                                                                        tmp_path):
    from bids_mrisr.workflows.base import sr_options

    settings = _settings(phantom_dataset, tmp_path)
    assert settings.input_consistency == "auto"
    assert sr_options(settings, None, 1).input_consistency is True
    settings = _settings(phantom_dataset, tmp_path, "--input-consistency", "off")
    assert sr_options(settings, None, 1).input_consistency is False
    assert main([str(phantom_dataset), str(tmp_path / "out"), "participant",
                 "--input-consistency", "on"]) == ExitCode.USAGE


def test_toml_config_file_and_flag_precedence(phantom_dataset, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('model = "interp"\nseed = 3\noutput-resolution = 0.5\n')
    settings = _settings(phantom_dataset, tmp_path, "--config-file", str(config), "--seed", "9")
    assert settings.model == "interp"
    assert settings.output_resolution == pytest.approx(0.5)
    assert settings.seed == 9  # the flag wins over the file


def test_toml_unknown_key_is_usage_error(phantom_dataset, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("modle = 'interp'\n")
    with pytest.raises(UserError) as err:
        _settings(phantom_dataset, tmp_path, "--config-file", str(config))
    assert err.value.code == ExitCode.USAGE
    assert "modle" in str(err.value)


def test_toml_bad_value_is_usage_error(phantom_dataset, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("model = 'gan'\n")
    with pytest.raises(UserError) as err:
        _settings(phantom_dataset, tmp_path, "--config-file", str(config))
    assert err.value.code == ExitCode.USAGE


def test_unknown_analysis_level_exits_17(phantom_dataset, tmp_path):
    assert main([str(phantom_dataset), str(tmp_path / "out"), "subject"]) == 17


def test_bad_flag_exits_64(phantom_dataset, tmp_path, capsys):
    assert main([str(phantom_dataset), str(tmp_path / "out"), "participant", "--model", "x"]) == 64


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "bids_mrisr" in capsys.readouterr().out


@pytest.mark.parametrize("inside", ["derivatives/sr", "."])
def test_output_inside_bids_dir_exits_64_and_writes_nothing(phantom_dataset, tmp_path, inside):
    before = sorted(p.relative_to(phantom_dataset) for p in phantom_dataset.rglob("*"))
    code = main([str(phantom_dataset), str(phantom_dataset / inside), "participant",
                 "-w", str(tmp_path / "work"), "--model", "interp"])
    assert code == 64
    after = sorted(p.relative_to(phantom_dataset) for p in phantom_dataset.rglob("*"))
    assert before == after


def test_work_dir_inside_bids_dir_exits_64(phantom_dataset, tmp_path):
    code = main([str(phantom_dataset), str(tmp_path / "out"), "participant",
                 "-w", str(phantom_dataset / "work"), "--model", "interp"])
    assert code == 64
    assert not (phantom_dataset / "work").exists()


def test_missing_bids_dir_exits_66(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66


def test_use_plugin_file_selects_a_nipype_plugin(phantom_dataset, tmp_path):
    from bids_mrisr.cli.graph import execution_plugin

    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  dont_resubmit_completed_jobs: true\n"
                      "  sbatch_args: --time=1:00:00 --mem=8G\n")
    settings = _settings(phantom_dataset, tmp_path, "--use-plugin", str(plugin))
    assert execution_plugin(settings, 2) == (
        "SLURMGraph", {"dont_resubmit_completed_jobs": True,
                       "sbatch_args": "--time=1:00:00 --mem=8G"})
    # MultiProc from a file keeps --nprocs/--mem unless the file sets them
    plugin.write_text("plugin: MultiProc\nplugin_args: {n_procs: 3}\n")
    settings = _settings(phantom_dataset, tmp_path, "--use-plugin", str(plugin), "--mem", "6G")
    assert execution_plugin(settings, 1) == (
        "MultiProc", {"n_procs": 3, "raise_insufficient": False, "memory_gb": 6.0})
    # without a file: Linear for one run, MultiProc for several
    settings = _settings(phantom_dataset, tmp_path, "--nprocs", "2")
    assert execution_plugin(settings, 1) == ("Linear", {})
    assert execution_plugin(settings, 2)[0] == "MultiProc"
    # the TOML config file takes the same option
    config = tmp_path / "config.toml"
    config.write_text(f'use-plugin = "{plugin}"\n')
    settings = _settings(phantom_dataset, tmp_path, "--config-file", str(config))
    assert settings.nipype_plugin == "MultiProc"


@pytest.mark.parametrize(("content", "message"), [
    ("plugin: Slurm\n", "unknown nipype plugin 'Slurm'"),
    ("plugin_args: {}\n", "expected a 'plugin:' name"),
    ("plugin: MultiProc\nplugin_arg: {}\n", "unknown key(s) plugin_arg"),
    ("plugin: MultiProc\nplugin_args: [1, 2]\n", "plugin_args must be a mapping"),
    ("plugin: [\n", "not valid YAML at line"),
])
def test_bad_plugin_file_is_a_usage_error(phantom_dataset, tmp_path, content, message):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        _settings(phantom_dataset, tmp_path, "--use-plugin", str(plugin))
    assert err.value.code == ExitCode.USAGE
    assert str(plugin) in str(err.value)


@pytest.mark.parametrize(("line", "message"), [
    ('seed = "abc"', "argument --seed: invalid int value: 'abc'"),
    ("nprocs = 0", "argument --nprocs/--n-cpus: must be >= 1, got 0"),
    ('device = "banana"', "argument --device: expected auto, cpu, cuda or cuda:N"),
    ('mem = "lots"', "argument --mem/--mem-gb: expected a memory size"),
    ('planes = "diagonal"', "argument --planes: invalid choice: 'diagonal'"),
    ('skip-bids-validation = "yes"', "skip-bids-validation must be true or false"),
    ("bids_filters = {}", "unknown setting(s) bids_filters"),
])
def test_toml_values_get_the_same_checks_as_flags(phantom_dataset, tmp_path, line, message):
    config = tmp_path / "config.toml"
    config.write_text(line + "\n")
    with pytest.raises(UserError) as err:
        _settings(phantom_dataset, tmp_path, "--config-file", str(config))
    assert err.value.code == ExitCode.USAGE
    assert str(err.value).startswith(f"{config}: ")
    assert message in str(err.value)


def test_toml_takes_every_long_option_spelling(phantom_dataset, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[bids_mrisr]\nparticipant-label = ["01"]\nsession_label = "a"\n'
                      'mem = "8000M"\nplanes = "axial"\nskip_bids_validation = true\n'
                      "verbose = 2\n")
    settings = _settings(phantom_dataset, tmp_path, "--config-file", str(config))
    assert settings.participant_labels == ("01",) and settings.session_labels == ("a",)
    assert settings.mem_gb == pytest.approx(8000 / 1024)
    assert settings.planes == ("axial",)
    assert settings.skip_bids_validation is True and settings.verbose == 2
    settings = _settings(phantom_dataset, tmp_path, "--config-file", str(config),
                         "--participant-label", "02", "--mem", "2G")
    assert settings.participant_labels == ("02",) and settings.mem_gb == 2.0  # flags win


def test_paths_are_made_absolute_and_tidy(phantom_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    roundabout = Path("..") / tmp_path.name / "x" / ".." / "out"
    settings = build_settings([str(phantom_dataset), str(roundabout), "participant",
                               "-w", "work/../work"])
    assert settings.output_dir == (tmp_path / "out").resolve()
    assert settings.work_dir == (tmp_path / "work").resolve()
    missing = tmp_path / "a" / ".." / "missing"
    assert main([str(missing), str(tmp_path / "out"), "participant"]) == ExitCode.NO_INPUT
    err = capsys.readouterr().err
    assert f"{(tmp_path / 'missing').resolve()}: input BIDS directory does not exist" in err
    assert "/../" not in err


def test_main_help_lists_every_exit_code(capsys):
    """The epilog is hand-written text: every ExitCode the app can return must be in it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    missing = [code for code in ExitCode if f" {int(code)} " not in text.split("exit codes:")[1]]
    assert not missing, f"exit codes not in --help: {missing}"
