"""The group level: one table of every super-resolved run in the output dataset."""

from __future__ import annotations

import csv
import io
import json
import logging

from bids_mrisr.bids.derivatives import DESC_SR
from bids_mrisr.config import Settings
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.image.io import atomic_write_bytes

LOGGER = logging.getLogger("bids_mrisr")
COLUMNS = ("output", "sources", "model", "weights_sha256", "steps", "seed", "device",
           "resolution_mm")


def run_group(settings: Settings) -> ExitCode:
    """Collect the participant-level sidecars into ``group_sr.tsv`` (ignored by the validator)."""
    if not (settings.output_dir / "dataset_description.json").is_file():
        raise UserError(f"{settings.output_dir}: no participant-level outputs; run the "
                        "participant level first", ExitCode.NO_INPUT)
    rows = []
    for sidecar in sorted(settings.output_dir.glob(f"sub-*/**/*_desc-{DESC_SR}_*.json")):
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
        })
    if not rows:
        raise UserError(f"{settings.output_dir}: no super-resolved volumes found",
                        ExitCode.NO_INPUT)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    target = settings.output_dir / "logs" / "group_sr.tsv"
    atomic_write_bytes(target, buffer.getvalue().encode())
    LOGGER.info("group table of %d run(s): %s", len(rows), target)
    return ExitCode.OK
