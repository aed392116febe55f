"""Find the anatomical runs to super-resolve, with pybids.

Every ``anat`` T1w and T2w run is one unit of work, carrying its BIDS entities (ses, acq, ce,
rec, run) so that outputs keep them. Other anatomical suffixes (FLAIR, PDw, ...) are reported and
skipped.
"""

from __future__ import annotations

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
    if not description.is_file():
        raise UserError(
            f"{description}: missing; every BIDS dataset needs a dataset_description.json "
            '(at least {"Name": "...", "BIDSVersion": "1.10.0"})',
            ExitCode.INVALID_BIDS,
        )


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
        LOGGER.warning("participant label(s) not in the dataset: %s", ", ".join(missing))
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
    names: dict[str, AnatRun] = {}
    for run in runs:
        clash = names.setdefault(run.label, run)
        if clash is not run:  # e.g. an entity we do not carry into output names
            raise UserError(f"{run.path}: would share its output name with {clash.relpath}; "
                            "use --bids-filter-file to select one of them", ExitCode.USAGE)
    return runs
