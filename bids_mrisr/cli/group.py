"""The group level: one table of every run in the output dataset, super-resolved runs compared
with each other and runs that were resampled only listed apart."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from bids_mrisr.bids.derivatives import (
    RESAMPLED_ONLY,
    SUPER_RESOLVED,
    OutputVolume,
    output_volumes,
    sidecar_path,
)
from bids_mrisr.config import Settings
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.runtime.atomic import atomic_write_bytes

LOGGER = logging.getLogger("bids_mrisr")
COLUMNS = ("output", "sources", "model", "weights_sha256", "steps", "seed", "device",
           "resolution_mm", "seconds", "sharpness_gain", "relative_noise", "flag", "kind")
QC_KEYS = ("sharpness_gain", "relative_noise")


def run_group(settings: Settings) -> ExitCode:
    """Collect the participant-level sidecars and QC figures into ``group_summary.tsv`` and
    ``group.html`` (both ignored by the validator). Only super-resolved runs are counted as
    such and compared for outliers, each model's runs with each other; resampled-only runs
    come after them, never flagged."""
    if not (settings.output_dir / "dataset_description.json").is_file():
        raise UserError(f"{settings.output_dir}: no participant-level outputs; run the "
                        "participant level first", ExitCode.NO_INPUT)
    volumes = output_volumes(settings.output_dir)
    if not volumes:
        raise UserError(f"{settings.output_dir}: no super-resolved or resampled volumes found",
                        ExitCode.NO_INPUT)
    rows = [_row(settings.output_dir, volume) for volume in volumes]
    rows.sort(key=lambda row: (row["kind"] != SUPER_RESOLVED, row["output"]))
    _flag_outliers([row for row in rows if row["kind"] == SUPER_RESOLVED])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    target = settings.output_dir / "group_summary.tsv"
    atomic_write_bytes(target, buffer.getvalue().encode())
    restored = sum(row["kind"] == SUPER_RESOLVED for row in rows)
    LOGGER.info("group table: %d super-resolved run(s), %d resampled only: %s", restored,
                len(rows) - restored, target)
    from bids_mrisr.reports.html import write_group_report

    LOGGER.info("group report: %s", write_group_report(settings.output_dir, rows))
    return ExitCode.OK


def _row(output_dir: Path, volume: OutputVolume) -> dict[str, str | float]:
    sidecar = sidecar_path(volume.path)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = {}
    info = meta.get("SuperResolution", {})
    return {
        "output": volume.path.relative_to(output_dir).as_posix(),
        "sources": " ".join(meta.get("Sources", [])),
        "model": info.get("Model", ""),
        "weights_sha256": info.get("WeightsSHA256", ""),
        "steps": info.get("SamplingSteps", ""),
        "seed": info.get("Seed", ""),
        "device": info.get("Device", ""),
        "resolution_mm": (meta.get("VoxelSize") or [""])[0],
        "seconds": info.get("Seconds", ""),
        **_qc(output_dir, volume.path),
        "flag": "",
        "kind": SUPER_RESOLVED if volume.restored else RESAMPLED_ONLY,
    }


def _qc(output_dir: Path, volume: Path) -> dict[str, str | float]:
    """The no-reference figures the subject report wrote for this run (if any)."""
    from bids_mrisr.reports.html import qc_path

    qc_file = qc_path(output_dir, volume)
    if not qc_file.is_file():
        return {"sharpness_gain": "", "relative_noise": ""}
    qc = json.loads(qc_file.read_text())
    return {"sharpness_gain": round(qc["sharpness_gain"], 4),
            "relative_noise": round(qc["relative_noise"], 5)}


def _flag_outliers(rows: list[dict]) -> None:
    """Flag super-resolved runs far from the others of the same model (like with like: a
    teacher's or the interp baseline's gain is not a student's)."""
    from bids_mrisr.reports.html import robust_outliers

    for model in sorted({str(row["model"]) for row in rows}):
        group = [row for row in rows if str(row["model"]) == model]
        for key in QC_KEYS:
            values = [(row, row[key]) for row in group if isinstance(row[key], float)]
            flags = robust_outliers([v for _, v in values])
            for (row, _), flagged in zip(values, flags, strict=True):
                if flagged:
                    row["flag"] = (row["flag"] + f" unusual {key}").strip()
