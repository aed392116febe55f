"""The single entry point from the workflow into super-resolution.

Volume in, volume out, both on the target grid: the preprocessing workflow has already resampled
the input (cubic B-spline) onto the output grid and normalised its intensities, so every method
solves the same task, restoring the missing high frequencies. ``interp`` returns that cubic
estimate unchanged; ``teacher`` and ``student`` hand the volume to the 2.5D diffusion inference
engine in :mod:`bids_mrisr.sr.inference`.

This module (like all of ``sr/``) imports no nipype, pybids or config: everything arrives as
plain arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("student", "teacher", "interp")


class SRError(RuntimeError):
    """A super-resolution failure with a message meant for the user (no traceback)."""


@dataclass
class SRResult:
    """What one super-resolution call produces, all on the target grid."""

    image: np.ndarray
    """Super-resolved volume, float32, same shape as the input."""
    gates: np.ndarray | None = None
    """Per-expert gating maps, float32, shape (K, *image.shape), summing to 1 over K (teacher)."""
    expert_names: list[str] = field(default_factory=list)
    uncertainty: np.ndarray | None = None
    """Voxel-wise standard deviation over stochastic draws (only when num_samples > 1)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance for the sidecar: model name, weights sha256, steps, seed, device, ..."""


@dataclass(frozen=True)
class SROptions:
    """Run-time knobs of the inference engine, passed down from the command line."""

    method: str = "student"
    weights: Path | None = None
    device: str = "auto"
    seed: int = 0
    steps: int | None = None
    num_samples: int = 1
    eta: float = 0.0
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    batch_size: int | None = None
    max_memory_gb: float | None = None
    threads: int | None = None
    gate_skip_threshold: float = 1e-3
    thick_axis: int | None = None
    """Axis of the target grid along which the input was acquired with thick slices (from the
    header, see :func:`bids_mrisr.sr.geometry.thick_axis`); None for isotropic inputs. Networks
    then run only in the planes that contain it, with it along the slice rows, as trained."""


def super_resolve(
    volume: np.ndarray,
    options: SROptions,
    progress: Callable[[int, int], None] | None = None,
) -> SRResult:
    """Super-resolve ``volume`` (already on the target grid, normalised intensities).

    ``progress(done, total)`` is called as work advances, so callers can show a bar or log lines.
    """
    if options.method not in METHODS:
        raise SRError(f"unknown SR method {options.method!r}; choose one of {', '.join(METHODS)}")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise SRError(f"super-resolution expects a 3D volume, got shape {volume.shape}")
    if options.method == "interp":
        if progress is not None:
            progress(1, 1)
        return SRResult(
            image=volume.copy(),
            info={"Method": "cubic B-spline interpolation", "Model": "interp"},
        )
    from bids_mrisr.sr.inference import run_model  # torch is imported only when needed

    return run_model(volume, options, progress=progress)
