"""Find the anatomical runs to super-resolve, with pybids.

Every ``anat`` T1w and T2w run is one unit of work, carrying its BIDS entities (ses, acq, ce,
rec, run) so that outputs keep them. Other anatomical suffixes (FLAIR, PDw, ...) are reported and
skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids import BIDSLayout

from bids_mrisr.errors import ExitCode, UserError

LOGGER = logging.getLogger("bids_mrisr")

SUPPORTED_SUFFIXES = ("T1w", "T2w")
# pybids entity name -> BIDS key, in the order BIDS puts them in a file name.
ENTITY_KEYS = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "run": "run",
    "echo": "echo",
    "part": "part",
    "chunk": "chunk",
}


@dataclass(frozen=True)
class AnatRun:
    """One anatomical run: the input file and the entities that name its outputs."""

    path: Path
    suffix: str
    entities: dict[str, str] = field(hash=False)
    relpath: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """The run's sidecar metadata as pybids resolves it (inheritance principle applied)."""

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def stem(self) -> str:
        """BIDS-style name of the run without the suffix, e.g. ``sub-01_ses-a_run-1``."""
        return "_".join(
            f"{key}-{self.entities[name]}" for name, key in ENTITY_KEYS.items()
            if name in self.entities
        )

    @property
    def label(self) -> str:
        """A short, unique, filesystem-safe identifier (also a nipype node name)."""
        return f"{self.stem}_{self.suffix}".replace("-", "")


def check_dataset_description(bids_dir: Path) -> None:
    description = bids_dir / "dataset_description.json"
    needed = '(at least {"Name": "...", "BIDSVersion": "1.10.0"})'
    if not description.is_file():
        raise UserError(f"{description}: missing; every BIDS dataset needs a "
                        f"dataset_description.json {needed}", ExitCode.INVALID_BIDS)
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{description}: not valid JSON{where}; it must hold {needed}",
                        ExitCode.INVALID_BIDS) from None
    if not isinstance(content, dict) or "BIDSVersion" not in content:
        raise UserError(f"{description}: no BIDSVersion; it must hold {needed}",
                        ExitCode.INVALID_BIDS)


def _format_entity(value: Any) -> str:
    # pybids returns run as PaddedInt; keep the zero padding the file name used.
    return str(value)


def discover_runs(
    bids_dir: Path,
    participant_labels: tuple[str, ...] = (),
    session_labels: tuple[str, ...] = (),
    bids_filters: dict[str, dict[str, Any]] | None = None,
) -> list[AnatRun]:
    """Return the selected T1w/T2w runs (raises UserError 66/18 when there are none)."""
    check_dataset_description(bids_dir)
    layout = BIDSLayout(str(bids_dir), validate=False)
    base_query: dict[str, Any] = {"datatype": "anat", "extension": [".nii", ".nii.gz"]}

    all_anat = layout.get(**base_query)
    supported = [f for f in all_anat if f.entities.get("suffix") in SUPPORTED_SUFFIXES]
    if not supported:
        raise UserError(f"{bids_dir}: no anatomical T1w or T2w runs found", ExitCode.NO_INPUT)

    ignored = sorted({f.entities.get("suffix") for f in all_anat} - set(SUPPORTED_SUFFIXES))
    if ignored:
        LOGGER.info("ignoring anatomical suffix(es) %s: only T1w and T2w are super-resolved",
                    ", ".join(str(s) for s in ignored))

    known_subjects = set(layout.get_subjects())
    missing = [label for label in participant_labels if label not in known_subjects]
    if missing:
        LOGGER.warning("participant label(s) not in the dataset: %s (it has: %s)",
                       ", ".join(_with_suggestion(label, known_subjects) for label in missing),
                       ", ".join(sorted(known_subjects)[:20])
                       + (", ..." if len(known_subjects) > 20 else ""))
    filters = bids_filters or {}
    runs: list[AnatRun] = []
    for suffix in SUPPORTED_SUFFIXES:
        query = dict(base_query, suffix=suffix)
        if participant_labels:
            query["subject"] = list(participant_labels)
        if session_labels:
            query["session"] = list(session_labels)
        query.update(filters.get(suffix.lower(), {}))
        for bids_file in layout.get(**query):
            entities = {
                name: _format_entity(bids_file.entities[name])
                for name in ENTITY_KEYS if name in bids_file.entities
            }
            runs.append(AnatRun(
                path=Path(bids_file.path),
                suffix=suffix,
                entities=entities,
                relpath=Path(bids_file.path).relative_to(bids_dir).as_posix(),
                metadata=dict(bids_file.get_metadata()),
            ))
    if not runs:
        selection = []
        if participant_labels:
            selection.append("participant(s) " + ", ".join(participant_labels))
        if session_labels:
            selection.append("session(s) " + ", ".join(session_labels))
        if filters:
            selection.append("the BIDS filter file")
        raise UserError(
            f"{bids_dir}: {' and '.join(selection) or 'the filters'} selected no T1w/T2w run",
            ExitCode.NOTHING_SELECTED,
        )
    runs.sort(key=lambda run: run.relpath)
    folders = {d.name[4:] for d in bids_dir.glob("sub-*") if d.is_dir()}  # pybids skips empties
    present = known_subjects | folders
    selected = set(participant_labels) & present if participant_labels else present
    empty = sorted(selected - {run.subject for run in runs})
    if empty and not session_labels and not filters:
        LOGGER.warning("no T1w/T2w run for %s: nothing to do there",
                       ", ".join(f"sub-{label}" for label in empty))
    return runs


def output_name_clashes(runs: list[AnatRun]) -> dict[str, str]:
    """Runs (by relpath) that would write the same output file, each with the reason.

    Every entity of the input names the output, so this is left for true duplicates: the same
    run stored twice (``.nii`` beside ``.nii.gz``). Only these runs are refused; the others
    are processed.
    """
    by_label: dict[str, list[AnatRun]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    clashes: dict[str, str] = {}
    for group in (g for g in by_label.values() if len(g) > 1):
        for run in group:
            others = ", ".join(o.relpath for o in group if o is not run)
            clashes[run.relpath] = (f"is the same run as {others} (one output name for both); "
                                    "remove one, or select one with --bids-filter-file")
    return clashes


def _with_suggestion(label: str, known: set[str]) -> str:
    """``label`` with the nearest existing label, where one is close (a typo's fix)."""
    import difflib

    near = difflib.get_close_matches(label, sorted(known), n=1, cutoff=0.6)
    return f"{label} (did you mean {near[0]}?)" if near else label
