"""Checks an input volume before any work is spent on it.

Each problem is reported as one line naming the file, so a bad run fails fast and clearly while
the other runs are still processed.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import obliquity, voxel_sizes

from bids_mrisr.image.resample import default_resolution, target_grid
from bids_mrisr.memory import minimum_peak_gb, physical_memory_gb

MIN_SLICES = 4
PLAUSIBLE_VOXEL_MM = (0.01, 50.0)
"""MRI voxels lie far inside this range; outside it the header's units or pixdim are wrong
(and N4's B-spline fit fails on such grids)."""
NIFTI_MAX_DIM = 32767
MAX_CONDITION = 1e6
"""A voxel-to-world matrix this ill-conditioned maps the volume onto (nearly) a plane."""
OBLIQUE_DEGREES = 1.0


class NotEnoughMemory(str):
    """A problem that more memory or a coarser grid solves: a resource problem, not bad data
    (compares equal to its text, like every other problem)."""


@dataclass(frozen=True)
class VoxelFacts:
    """What one read of the voxels tells the checks and the skull-strip estimate."""

    nonfinite: int
    any_nonzero: bool
    foreground_ml: float
    """Volume of the voxels that differ from the minimum (the background of a stripped brain)."""
    background_fraction: float


Version = tuple[str, int, int, int, int]


def _version(path: Path) -> Version:
    """The file and its version (inode, mtime, ctime, size): a rewritten or replaced file is
    loaded afresh."""
    stat = Path(path).stat()
    return (str(Path(path).absolute()), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns,
            stat.st_size)


@functools.lru_cache(maxsize=32)
def _load(version: Version) -> nib.spatialimages.SpatialImage:
    return nib.load(version[0])


def load_header(path: Path) -> nib.spatialimages.SpatialImage:
    """The image with its header, loaded once per file version (voxels stay on disk): the
    checks, the warnings and the workflow builder all read the same object."""
    return _load(_version(path))


@functools.lru_cache(maxsize=32)
def _facts(version: Version) -> VoxelFacts:
    image = _load(version)
    data = np.asanyarray(image.dataobj)
    nonfinite = 0
    if np.issubdtype(data.dtype, np.floating):
        nonfinite = int(np.count_nonzero(~np.isfinite(data)))
    background = np.nanmin(data) if nonfinite else data.min()
    foreground = int(np.count_nonzero(data != background))
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    return VoxelFacts(nonfinite, bool(np.any(data)), foreground * voxel_ml,
                      1.0 - foreground / data.size)


def voxel_facts(path: Path) -> VoxelFacts:
    """Read the voxels once per file version (the gzip inflate is the slow part)."""
    return _facts(_version(path))


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text or type(err).__name__


def _file_problem(path: Path) -> str | None:
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (to {os.readlink(path)})"
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _stored_voxel_sizes(image: nib.spatialimages.SpatialImage) -> tuple[float, ...]:
    """pixdim as stored: nibabel silently turns a 0 into 1 mm on load, which would hide a
    header that does not know its own geometry."""
    header = image.header
    if isinstance(header, nib.Nifti1Header) and image.get_filename():
        with nib.openers.ImageOpener(image.get_filename()) as fobj:
            raw = type(header).from_fileobj(fobj, check=False)
        return tuple(float(z) for z in raw["pixdim"][1:4])
    return tuple(float(z) for z in header.get_zooms()[:3])


def _header_problem(image: nib.spatialimages.SpatialImage) -> str | None:
    shape = image.shape
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        return f"is {len(shape)}D with shape {tuple(shape)}; only 3D volumes can be super-resolved"
    if len(shape) < 3:
        return f"has {len(shape)} dimensions; a 3D volume is needed"
    short = [(axis, n) for axis, n in enumerate(shape[:3]) if n < MIN_SLICES]
    if short:
        axis, n = short[0]
        return f"has only {n} slice(s) along axis {axis}; at least {MIN_SLICES} are needed"
    zooms = _stored_voxel_sizes(image)
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        return f"has invalid voxel sizes {tuple(float(z) for z in zooms)} in its header"
    low, high = PLAUSIBLE_VOXEL_MM
    if not all(low <= z <= high for z in zooms):
        return (f"has implausible voxel sizes {tuple(round(float(z), 6) for z in zooms)} mm "
                f"(outside {low:g}-{high:g} mm); check the header's pixdim and spatial units")
    matrix = image.affine[:3, :3]
    if not np.all(np.isfinite(image.affine)):
        return "has a non-finite affine (voxel-to-world matrix); fix its sform/qform"
    if np.linalg.cond(matrix) > MAX_CONDITION:
        return "has a singular affine (voxel-to-world matrix); fix its sform/qform"
    return None


def _output_grid(image: nib.spatialimages.SpatialImage, output_resolution: float | None,
                 ) -> tuple[tuple[int, ...], float]:
    """The target grid's shape and its resolution (mm)."""
    zooms = voxel_sizes(image.affine)
    resolution = output_resolution or default_resolution(tuple(float(z) for z in zooms))
    shape, _, _ = target_grid(image.shape[:3], image.affine, resolution)
    return tuple(int(n) for n in shape), resolution


def minimum_memory_gb(path: Path, output_resolution: float | None = None) -> float:
    """The least memory a usable input's run needs (its grid in the smallest tiles)."""
    shape, _ = _output_grid(load_header(path), output_resolution)
    return minimum_peak_gb(int(np.prod(shape, dtype=np.float64)))


def _memory_problem(image: nib.spatialimages.SpatialImage, output_resolution: float | None,
                    mem_gb: float | None) -> str | None:
    """Refuse, before any work, a grid that cannot fit even in the SR engine's smallest tiles
    (a huge field of view, a bad header); any other grid is tiled to fit."""
    zooms = voxel_sizes(image.affine)
    shape, resolution = _output_grid(image, output_resolution)
    if max(shape) > NIFTI_MAX_DIM:
        return (f"would need a {shape[0]}x{shape[1]}x{shape[2]} output grid at {resolution:g} mm, "
                f"more than NIfTI's {NIFTI_MAX_DIM} voxels per axis; use a coarser "
                "--output-resolution")
    need = minimum_peak_gb(int(np.prod(shape, dtype=np.float64)))
    limit, what = (mem_gb, f"--mem {mem_gb:g} GB") if mem_gb else (
        physical_memory_gb(), "this machine's memory")
    if limit is None or need <= limit:
        return None
    fov = " x ".join(f"{n * z:.0f}" for n, z in zip(image.shape[:3], zooms, strict=True))
    digits = next(d for d in (2, 3, 4, 6) if round(need, d) != round(limit, d) or d == 6)
    return NotEnoughMemory(
        f"needs about {need:.{digits}f} GB for its {shape[0]}x{shape[1]}x{shape[2]} output grid at "
        f"{resolution:g} mm even in the smallest tiles (field of view {fov} mm), more than "
        f"{what} ({limit:.{digits}f} GB); give it more memory or use a coarser --output-resolution")


def input_problem(path: Path, output_resolution: float | None = None,
                  mem_gb: float | None = None) -> str | None:
    """Return a one-line description of what is wrong with ``path``, or None if it is usable.

    The header is checked before the voxels are read, so a file that declares an impossible
    size is refused without trying to load it.
    """
    problem = _file_problem(path)
    if problem:
        return problem
    try:
        image = load_header(path)
        problem = _header_problem(image) or _memory_problem(image, output_resolution, mem_gb)
        if problem:
            return problem
        facts = voxel_facts(path)
    except Exception as err:  # nibabel raises many types for corrupt files
        return f"is not a readable NIfTI file ({_reason(err)})"
    if facts.nonfinite:
        return f"contains {facts.nonfinite} non-finite (NaN/Inf) voxel(s)"
    if not facts.any_nonzero:
        return "is all zeros"
    return None


def input_warnings(path: Path) -> list[str]:
    """What is usable but worth a line in the log (called only for inputs without problems)."""
    image = load_header(path)
    angle = float(np.degrees(np.max(np.abs(obliquity(image.affine)))))
    if angle > OBLIQUE_DEGREES:
        return [f"is oblique ({angle:.1f} degrees from the nearest scanner axes); the output keeps "
                "that orientation (no extra resampling)"]
    return []


def looks_skull_stripped(path: Path, sidecar: dict | None = None) -> bool:
    """The input sidecar's ``SkullStripped`` if present, else an estimate from the image.

    A brain-extracted volume has an exactly-constant background and a non-background volume
    of a brain (< ~2 L), whereas a whole-head scan has noise around a 3-5 L head.
    """
    if sidecar and isinstance(sidecar.get("SkullStripped"), bool):
        return bool(sidecar["SkullStripped"])
    facts = voxel_facts(path)
    return bool(facts.foreground_ml < 2000.0 and facts.background_fraction > 0.2)


SLICE_SELECTIVE = "2D"
"""BIDS ``MRAcquisitionType`` of a multi-slice acquisition: each slice excited on its own."""


def slice_profile_from_metadata(sidecar: dict | None) -> str | None:
    """The slice-profile shape the sidecar implies for a scan's thick slices (None: no word).

    A 2D acquisition excites each slice with a slice-selective RF pulse designed for a flat top
    and steep edges (windowed sinc or SLR): a box-like profile, which the student restores
    better when told so (docs/model-card.md). A 3D acquisition's coarse axis is a Fourier
    (partition) direction whose point-spread function is neither shape: nothing is implied.
    """
    if sidecar and str(sidecar.get("MRAcquisitionType", "")).upper() == SLICE_SELECTIVE:
        return "box"
    return None
