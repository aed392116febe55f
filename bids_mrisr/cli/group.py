"""The group level: one table of every super-resolved run in the output dataset."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from bids_mrisr.bids.derivatives import DESC_SR
from bids_mrisr.config import Settings
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.image.io import atomic_write_bytes

LOGGER = logging.getLogger("bids_mrisr")
COLUMNS = ("output", "sources", "model", "weights_sha256", "steps", "seed", "device",
           "resolution_mm", "seconds", "sharpness_gain", "relative_noise", "flag")


def run_group(settings: Settings) -> ExitCode:
    """Collect the participant-level sidecars and QC figures into ``group_summary.tsv`` and
    ``group.html`` (both ignored by the validator)."""
    if not (settings.output_dir / "dataset_description.json").is_file():
        raise UserError(f"{settings.output_dir}: no participant-level outputs; run the "
                        "participant level first", ExitCode.NO_INPUT)
    rows = []
    for sidecar in sorted(settings.output_dir.glob(f"sub-*/**/anat/*_desc-{DESC_SR}_*.json")):
        meta = json.loads(sidecar.read_text())
        info = meta.get("SuperResolution", {})
        rows.append({
            "output": sidecar.relative_to(settings.output_dir).as_posix()
            .replace(".json", ".nii.gz"),
            "sources": " ".join(meta.get("Sources", [])),
            "model": info.get("Model", ""),
            "weights_sha256": info.get("WeightsSHA256", ""),
            "steps": info.get("SamplingSteps", ""),
            "seed": info.get("Seed", ""),
            "device": info.get("Device", ""),
            "resolution_mm": (meta.get("VoxelSize") or [""])[0],
            "seconds": info.get("Seconds", ""),
            **_qc(settings.output_dir, sidecar),
        })
    if not rows:
        raise UserError(f"{settings.output_dir}: no super-resolved volumes found",
                        ExitCode.NO_INPUT)
    _flag_outliers(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    target = settings.output_dir / "group_summary.tsv"
    atomic_write_bytes(target, buffer.getvalue().encode())
    LOGGER.info("group table of %d run(s): %s", len(rows), target)
    from bids_mrisr.reports.html import write_group_report

    LOGGER.info("group report: %s", write_group_report(settings.output_dir, rows))
    return ExitCode.OK


def _qc(output_dir: Path, sidecar: Path) -> dict[str, str | float]:
    """The no-reference figures the subject report wrote for this run (if any)."""
    from bids_mrisr.reports.html import qc_path

    qc_file = qc_path(output_dir, sidecar)
    if not qc_file.is_file():
        return {"sharpness_gain": "", "relative_noise": ""}
    qc = json.loads(qc_file.read_text())
    return {"sharpness_gain": round(qc["sharpness_gain"], 4),
            "relative_noise": round(qc["relative_noise"], 5)}


def _flag_outliers(rows: list[dict]) -> None:
    from bids_mrisr.reports.html import robust_outliers

    for key in ("sharpness_gain", "relative_noise"):
        values = [(i, r[key]) for i, r in enumerate(rows) if isinstance(r[key], float)]
        flags = robust_outliers([v for _, v in values])
        for (i, _), flagged in zip(values, flags, strict=True):
            if flagged:
                rows[i]["flag"] = (rows[i].get("flag", "") + f" unusual {key}").strip()
    for row in rows:
        row.setdefault("flag", "")
