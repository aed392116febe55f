"""pybids discovery: suffixes, sessions, runs, entities, filters."""

from __future__ import annotations

import json
import logging

import pytest

from bids_mrisr.bids.layout import discover_runs
from bids_mrisr.cli.parser import read_filter_file
from bids_mrisr.errors import ExitCode, UserError
from tests.conftest import make_dataset


def test_finds_t1w_and_t2w_with_entities_and_ignores_flair(phantom_dataset, caplog):
    logger = logging.getLogger("bids_mrisr")
    logger.addHandler(caplog.handler)  # the app's logger does not propagate to the root
    try:
        with caplog.at_level(logging.INFO, logger="bids_mrisr"):
            runs = discover_runs(phantom_dataset)
    finally:
        logger.removeHandler(caplog.handler)
    assert [run.relpath for run in runs] == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_run-1_T1w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_run-2_T1w.nii.gz",
        "sub-02/ses-b/anat/sub-02_ses-b_acq-fast_T2w.nii.gz",
    ]
    assert "FLAIR" in caplog.text
    stems = [run.stem for run in runs]
    assert stems == ["sub-01", "sub-02_ses-a_run-1", "sub-02_ses-a_run-2",
                     "sub-02_ses-b_acq-fast"]
    assert len({run.label for run in runs}) == len(runs)


def test_participant_and_session_filters(phantom_dataset):
    assert [r.subject for r in discover_runs(phantom_dataset, ("01",))] == ["01"]
    runs = discover_runs(phantom_dataset, ("02",), ("b",))
    assert [r.suffix for r in runs] == ["T2w"]


def test_bids_filter_file(phantom_dataset, tmp_path):
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"t1w": {"run": 2}, "t2w": {"acquisition": "nomatch"}}))
    runs = discover_runs(phantom_dataset, bids_filters=read_filter_file(path))
    assert [r.relpath for r in runs] == ["sub-02/ses-a/anat/sub-02_ses-a_run-2_T1w.nii.gz"]


def test_bad_filter_file_is_usage_error(tmp_path):
    path = tmp_path / "filters.json"
    path.write_text('{"bold": {}}')
    with pytest.raises(UserError) as err:
        read_filter_file(path)
    assert err.value.code == ExitCode.USAGE


def test_nothing_selected_is_18(phantom_dataset):
    with pytest.raises(UserError) as err:
        discover_runs(phantom_dataset, ("nosuchsubject",))
    assert err.value.code == ExitCode.NOTHING_SELECTED


def test_a_mistyped_label_gets_the_nearest_one_and_the_labels_that_exist(phantom_dataset,
                                                                          caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(UserError):
        discover_runs(phantom_dataset, ("001",))
    assert "001 (did you mean 01?)" in caplog.text
    assert "it has: 01, 02" in caplog.text


def test_main_help_lists_the_subcommands_and_exit_codes(capsys):
    from bids_mrisr.cli.parser import build_parser

    text = build_parser().format_help()
    for word in ("bids_mrisr train", "bids_mrisr demo", "bids_mrisr slurm", "64 usage error",
                 "130 interrupted"):
        assert word in " ".join(text.split()), word


def test_no_anatomical_runs_is_66(tmp_path):
    from tests.conftest import make_dataset

    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_FLAIR.nii.gz": None})
    with pytest.raises(UserError) as err:
        discover_runs(root)
    assert err.value.code == ExitCode.NO_INPUT


def test_echo_and_part_entities_keep_outputs_apart(tmp_path):
    from tests.conftest import make_dataset

    root = make_dataset(tmp_path / "bids", {
        "sub-01/anat/sub-01_echo-1_part-mag_T1w.nii.gz": None,
        "sub-01/anat/sub-01_echo-2_part-mag_T1w.nii.gz": None,
    })
    runs = discover_runs(root)
    assert [run.stem for run in runs] == ["sub-01_echo-1_part-mag", "sub-01_echo-2_part-mag"]


def test_runs_differing_only_in_task_keep_apart_names(tmp_path):
    """bids-examples ds004332 puts task- into anat names: every entity names the output."""
    from bids_mrisr.bids.layout import output_name_clashes

    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_task-rest_T1w.nii.gz": None,
                                            "sub-01/anat/sub-01_task-movie_T1w.nii.gz": None})
    runs = discover_runs(root)
    assert sorted(run.stem for run in runs) == ["sub-01_task-movie", "sub-01_task-rest"]
    assert output_name_clashes(runs) == {}
