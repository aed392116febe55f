"""BIDS-Derivatives: output names, sidecars, dataset_description.json; all writes atomic.

Output names (documented in docs/outputs.md) keep every entity of the input run and add
``res-<label>`` (the isotropic target grid) and, for a restored volume, ``desc-<label>``:

=====================  ===================================================  =================
what                   name                                                 when
=====================  ===================================================  =================
super-resolved volume  ``<run>_res-<r>_desc-sr_<T1w|T2w>.nii.gz``           an axis restored
resampled only         ``<run>_res-<r>_<T1w|T2w>.nii.gz``                   input already at
                                                                            the target grid
uncertainty (SD)       ``<run>_res-<r>_desc-srstd_<T1w|T2w>.nii.gz``        --num-samples > 1
gating maps (4D, K)    ``<run>_res-<r>_desc-<T1w|T2w>gates_probseg.nii.gz``  teacher
=====================  ===================================================  =================

A run whose input is already sampled at the target resolution has nothing to restore: it is
reoriented and resampled onto the grid, and named for what it is, ``res-<r>`` without
``desc-sr`` (not ``desc-preproc``, which sMRIPrep/fMRIPrep read from ``--derivatives`` as
their own bias-corrected T1w reference; this volume keeps the input's intensities). The names
are made and read here only (:func:`output_volumes`, :func:`parse_volume_name`): the graph, the
reports and the group level find both kinds through these functions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_mrisr import __version__
from bids_mrisr.image.io import save_nifti
from bids_mrisr.image.normalize import HIGH_PERCENTILE, LOW_PERCENTILE
from bids_mrisr.image.preprocess import N4_SHRINK_FACTOR
from bids_mrisr.runtime.atomic import atomic_write_bytes

BIDS_VERSION = "1.10.0"
RAW_LINK = "raw"
DESC_SR = "sr"
SUPER_RESOLVED = "super-resolved"
RESAMPLED_ONLY = "resampled-only"
"""``kind`` in group_summary.tsv: an axis restored (``desc-sr``), or an input already at the
target resolution, resampled only (no ``desc``)."""
DESC_STD = "srstd"
LOG_DIRNAME = "log"


def resolution_label(resolution_mm: float) -> str:
    """``1.0 -> '1mm'``, ``0.7 -> '0p7mm'``: BIDS labels are alphanumeric."""
    text = f"{resolution_mm:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", "p") + "mm"


def output_name(stem: str, resolution_mm: float | str, desc: str | None, suffix: str,
                extension: str = ".nii.gz") -> str:
    """``<stem>_res-<r>[_desc-<desc>]_<suffix><extension>``; ``resolution_mm`` in mm or as its
    label (``'1mm'``)."""
    label = (resolution_mm if isinstance(resolution_mm, str)
             else resolution_label(resolution_mm))
    return f"{stem}_res-{label}{f'_desc-{desc}' if desc else ''}_{suffix}{extension}"


def volume_desc(restored: bool) -> str | None:
    """``desc`` of a run's main volume: ``sr`` when an axis was restored, none when the input
    was already at the target resolution and was only resampled."""
    return DESC_SR if restored else None


def nothing_restored(info: dict[str, Any]) -> bool:
    """The engine's provenance says no axis needed restoring (``RestoredAxes: []``)."""
    return info.get("RestoredAxes") == []


VOLUME_SUFFIXES = ("T1w", "T2w")
_VOLUME_NAME = re.compile(
    r"^(?P<stem>sub-[A-Za-z0-9]+.*?)_res-(?P<res>[A-Za-z0-9]+)"
    r"(?:_desc-(?P<desc>[A-Za-z0-9]+))?_(?P<suffix>" + "|".join(VOLUME_SUFFIXES)
    + r")\.nii\.gz$")


@dataclass(frozen=True)
class OutputVolume:
    """A run's main output volume, found on disk: super-resolved or resampled only."""

    path: Path
    stem: str
    resolution: str
    """The ``res-`` label, e.g. ``1mm``."""
    suffix: str
    restored: bool
    """True: ``desc-sr`` (an axis restored); False: resampled only (``res-<r>``, no desc)."""

    @property
    def kind(self) -> str:
        return "super-resolved" if self.restored else "resampled only"

    def companion(self, desc: str, suffix: str | None = None) -> Path:
        """A product of the same run beside this volume: ``desc`` and ``suffix`` of its name
        (``srstd``; ``<T1w|T2w>gates`` with ``probseg``)."""
        return self.path.with_name(output_name(self.stem, self.resolution, desc,
                                               suffix or self.suffix))

    @property
    def uncertainty_path(self) -> Path:
        return self.companion(DESC_STD)

    @property
    def gates_path(self) -> Path:
        return self.companion(gates_desc(self.suffix), "probseg")


def parse_volume_name(path: Path) -> OutputVolume | None:
    """The output volume a path names (``desc-sr`` or resampled only), else None: sidecars,
    uncertainty and gating maps are not main volumes."""
    match = _VOLUME_NAME.match(Path(path).name)
    if match is None or match["desc"] not in (None, DESC_SR):
        return None
    return OutputVolume(path=Path(path), stem=match["stem"], resolution=match["res"],
                        suffix=match["suffix"], restored=match["desc"] == DESC_SR)


def output_volumes(output_dir: Path) -> list[OutputVolume]:
    """Every run's main volume in an output dataset, both kinds, sorted by path."""
    found = (parse_volume_name(p) for p in Path(output_dir).glob("sub-*/**/anat/*_res-*.nii.gz"))
    return sorted((v for v in found if v is not None), key=lambda v: v.path)


def run_volumes(anat_dir: Path, stem: str, suffix: str) -> list[OutputVolume]:
    """The main volumes of one run (stem and suffix of its input) in its anat folder, at any
    resolution, both kinds."""
    found = (parse_volume_name(p) for p in Path(anat_dir).glob(f"{stem}_res-*_{suffix}.nii.gz"))
    return sorted((v for v in found if v is not None and v.stem == stem), key=lambda v: v.path)


def gates_desc(suffix: str) -> str:
    """Gating maps of a T1w and a T2w run of one session must not share a name."""
    return f"{suffix}gates"


def subject_anat_dir(output_dir: Path, entities: dict[str, str]) -> Path:
    path = output_dir / f"sub-{entities['subject']}"
    if "session" in entities:
        path = path / f"ses-{entities['session']}"
    return path / "anat"


def bids_uri(relpath: str, dataset: str = RAW_LINK) -> str:
    return f"bids:{dataset}:{relpath}"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())
    return Path(path)


def container_info() -> dict[str, str] | None:
    """Container type and tag, set by the Dockerfile / Singularity.def environment."""
    kind = os.environ.get("BIDS_MRISR_CONTAINER_TYPE")
    if not kind:
        return None
    info = {"Type": kind}
    tag = os.environ.get("BIDS_MRISR_CONTAINER_TAG")
    if tag:
        info["Tag"] = tag
    return info


def _git(bids_dir: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(bids_dir), *args], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _source_dataset(bids_dir: Path) -> dict[str, str]:
    """What identifies the input beyond this machine: its DOI, and for a git/DataLad dataset
    the commit and remote. A local path alone is not a source (DatasetLinks keeps it)."""
    source: dict[str, str] = {}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        raw = {}
    doi = str(raw.get("DatasetDOI") or "").strip()
    if doi:
        bare = doi.removeprefix("doi:").removeprefix("https://doi.org/")
        source["DOI"] = f"doi:{bare}"
        source["URL"] = f"https://doi.org/{bare}"
    if (bids_dir / ".git").exists():
        commit = _git(bids_dir, "rev-parse", "HEAD")
        if commit:
            source["Version"] = commit
        remote = _git(bids_dir, "config", "--get", "remote.origin.url")
        if remote and "URL" not in source and "://" in remote:
            source["URL"] = remote
    return source


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    generated_by: dict[str, Any] = {
        "Name": "bids_mrisr",
        "Version": __version__,
        "Description": "Super-resolution of T1w/T2w MRI; each output's sidecar names the "
                       "method (SuperResolution.Model)",
    }
    container = container_info()
    if container:
        generated_by["Container"] = container
    source = _source_dataset(bids_dir)
    return {
        "Name": "bids_mrisr derivatives: super-resolved anatomical MRI",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        **({"SourceDatasets": [source]} if source else {}),
        "DatasetLinks": {RAW_LINK: bids_dir.resolve().as_uri()},
    }


README_TEXT = """# bids_mrisr derivatives

Super-resolved T1w/T2w volumes written by bids_mrisr (`desc-sr`); runs whose input already was
at the target resolution are resampled only and named without `desc` (`<run>_res-<r>_T1w`).
Every volume has a JSON sidecar with its sources (BIDS URIs into the `raw` dataset named in
dataset_description.json), the method, the model weights' sha256, sampling steps, seed and
device. `sub-*/log/` holds run logs (ignored by
the validator through .bidsignore).
"""


def init_derivatives_dataset(output_dir: Path, bids_dir: Path) -> None:
    """dataset_description.json, README and .bidsignore at the root of the output dataset."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    if not (output_dir / "README.md").exists():
        atomic_write_bytes(output_dir / "README.md", README_TEXT.encode())
    ignore = output_dir / ".bidsignore"
    patterns = ["sub-*/log", "logs", "*.html", "sub-*/figures", "group_summary.tsv",
                ".bids_mrisr"]
    existing = ignore.read_text().split() if ignore.exists() else []
    merged = existing + [p for p in patterns if p not in existing]
    if merged != existing:
        atomic_write_bytes(ignore, ("\n".join(merged) + "\n").encode())


def sidecar_path(nifti: Path) -> Path:
    return nifti.with_name(nifti.name.replace(".nii.gz", ".json"))


def _copy_nifti(src: Path, dst: Path) -> Path:
    """Copy via a temporary file + rename, so an interrupted run never leaves half a volume;
    the work directory's uncompressed files are compressed on the way (``.nii.gz`` outputs)."""
    if Path(src).name.endswith(".gz") == dst.name.endswith(".gz"):
        atomic_write_bytes(dst, Path(src).read_bytes())
        return dst
    return save_nifti(nib.load(str(src)), dst)


INTEGER_OUTPUT = np.int16
"""Integer inputs give int16 outputs with a scale factor (scl_slope/scl_inter): half the size
of float32, and 65,536 levels over the volume's range keep the SR detail (a quantisation
error near 1e-5 of the range, far below any SR gain); uint8 inputs gain levels rather than
lose the detail to 256."""


def _write_like_input(src: Path, dst: Path, input_dtype: str) -> Path:
    """The SR volume in the input's kind of data type: scaled int16 for integer inputs."""
    if not np.issubdtype(np.dtype(input_dtype), np.integer):
        return _copy_nifti(src, dst)
    image = nib.load(str(src))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    peak = float(np.abs(data).max())
    slope = peak / np.iinfo(INTEGER_OUTPUT).max if peak > 0 else 1.0
    # slope only, no intercept: zero stays exactly zero (background, skull-stripped masks)
    header = image.header.copy()
    header.set_data_dtype(INTEGER_OUTPUT)
    out = nib.Nifti1Image(np.round(data / slope).astype(INTEGER_OUTPUT), image.affine, header)
    out.header.set_slope_inter(slope, 0.0)
    return save_nifti(out, dst)


@dataclass(frozen=True)
class RunOutputs:
    """What every product of one run shares: where it goes, its sources, its provenance."""

    output_dir: Path
    relpath: str
    stem: str
    suffix: str
    entities: dict[str, str]
    resolution: float
    info: dict[str, Any]
    skull_stripped: bool
    input_voxel_size: list[float]
    restored: bool = True
    """False for an input already at the target resolution: resampled only, named without
    ``desc-sr`` (see :func:`volume_desc`)."""

    @property
    def anat_dir(self) -> Path:
        return subject_anat_dir(self.output_dir, self.entities)

    @property
    def sr_path(self) -> Path:
        """The run's main volume: ``desc-sr``, or ``res-<r>`` alone when resampled only."""
        return self.anat_dir / output_name(self.stem, self.resolution,
                                           volume_desc(self.restored), self.suffix)

    @property
    def other_kind_path(self) -> Path:
        """The name this run's main volume would have had as the other kind (an earlier
        version wrote resampled-only runs as ``desc-sr``): removed when the volume is
        written, so that one run never shows up as two."""
        return self.anat_dir / output_name(self.stem, self.resolution,
                                           volume_desc(not self.restored), self.suffix)

    @property
    def sources(self) -> list[str]:
        return [bids_uri(self.relpath)]

    @property
    def sr_uri(self) -> str:
        return bids_uri(self.sr_path.relative_to(self.output_dir).as_posix(), dataset="")

    def common(self) -> dict[str, Any]:
        after = "after SR" if self.restored else "afterwards"
        return {
            "Resolution": f"isotropic {self.resolution:g} mm voxels ("
                          + ("super-resolution target grid)" if self.restored else
                             "target grid; resampled only)"),
            "SkullStripped": self.skull_stripped,
            "InputVoxelSize": self.input_voxel_size,
            "VoxelSize": [self.resolution] * 3,
            "SoftwareName": "bids_mrisr",
            "SoftwareVersion": __version__,
            "SuperResolution": self.info,
            "Preprocessing": [
                "reoriented to RAS+",
                f"N4 bias-field correction (SimpleITK, shrink factor {N4_SHRINK_FACTOR})",
                f"robust intensity normalisation ({LOW_PERCENTILE:g}/{HIGH_PERCENTILE:g} "
                f"percentiles), inverted {after}",
                f"the N4 bias field multiplied back in {after} (the output keeps the input's "
                "intensities; downstream tools run their own bias correction)",
                f"cubic B-spline resampling to {self.resolution:g} mm",
            ],
        }


def write_sr_image(run: RunOutputs, sr_file: Path, input_dtype: str = "float32",
                   ) -> list[Path]:
    """The run's main volume and its sidecar: super-resolved (``desc-sr``), or resampled only
    when the input was already at the target resolution; the other kind's name of the same
    run, left by an earlier version, is removed."""
    model = run.info.get("Model", "interp")
    if run.restored:
        description = (f"{run.suffix} super-resolved with {model} (the input's intensities: "
                       "bias field and intensity scale restored)")
    else:
        description = (f"{run.suffix} resampled only: the input is already sampled at the "
                       f"{run.resolution:g} mm target resolution, so nothing was restored"
                       f"{'' if model == 'interp' else f' ({model} not applied)'}; reoriented "
                       "to RAS+ and cubic B-spline resampled onto the target grid, with the "
                       "input's intensities")
    written = [_write_like_input(sr_file, run.sr_path, input_dtype),
               write_json(sidecar_path(run.sr_path), {
                   "Description": description,
                   "Sources": run.sources,
                   **run.common(),
               })]
    for stale in (run.other_kind_path, sidecar_path(run.other_kind_path)):
        stale.unlink(missing_ok=True)
    return written


def write_uncertainty(run: RunOutputs, std_file: Path) -> list[Path]:
    """The voxel-wise SD over stochastic draws, beside the SR volume it describes."""
    std_path = run.anat_dir / output_name(run.stem, run.resolution, DESC_STD, run.suffix)
    return [_copy_nifti(std_file, std_path),
            write_json(sidecar_path(std_path), {
                "Description": "voxel-wise standard deviation of the super-resolved intensity "
                               f"over {run.info.get('NumSamples', '?')} stochastic draws "
                               "(uncertainty)",
                "Sources": run.sources + [run.sr_uri],
                "Units": "same as the super-resolved image",
                **run.common(),
            })]


def write_gating_maps(run: RunOutputs, gates_file: Path) -> list[Path]:
    """The MoEDiff-SR teacher's per-expert gates, a 4D probseg on the SR grid."""
    gates_path = run.anat_dir / output_name(run.stem, run.resolution, gates_desc(run.suffix),
                                            "probseg")
    names = list(run.info.get("ExpertNames", []))
    return [_copy_nifti(gates_file, gates_path),
            write_json(sidecar_path(gates_path), {
                "Description": "MoEDiff-SR per-expert gating maps: the weight of each expert's "
                               "denoiser at each voxel (volumes sum to 1)",
                "Sources": run.sources + [run.sr_uri],
                "SpatialReference": run.sr_uri,
                "ExpertNames": names,
                "Labels": {str(i): name for i, name in enumerate(names)},
                **run.common(),
            })]
