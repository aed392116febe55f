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

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bids_mrisr.sr.options import METHODS, NOTHING_RESTORED, SRError, SROptions, SRResult

__all__ = ["METHODS", "NOTHING_RESTORED", "SRError", "SROptions", "SRResult", "super_resolve"]


def super_resolve(
    volume: np.ndarray,
    options: SROptions,
    progress: Callable[[int, int], None] | None = None,
    resume_dir: Path | None = None,
) -> SRResult:
    """Super-resolve ``volume`` (already on the target grid, normalised intensities).

    ``progress(done, total)`` is called as work advances, so callers can show a bar or log lines.
    ``resume_dir`` keeps the network's finished batches, so an interrupted call resumes.
    """
    if options.method not in METHODS:
        raise SRError(f"unknown SR method {options.method!r}; choose one of {', '.join(METHODS)}")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise SRError(f"super-resolution expects a 3D volume, got shape {volume.shape}")
    nothing_to_restore = options.blurred_axes is not None and not options.blurred_axes
    if nothing_to_restore:
        # An input already at the target resolution is resampled only: no SR step runs, so no
        # progress line claims one (the workflow says "resampled only" when it builds the run).
        progress = None
    if options.method == "interp":
        if progress is not None:
            progress(1, 1)
        # The cubic estimate is the preprocessing's target grid itself: nothing is restored.
        return SRResult(
            image=volume.copy(),
            info={"Method": "cubic B-spline interpolation", "Model": "interp",
                  "RestoredAxes": [] if nothing_to_restore else None, "Seconds": 0.0,
                  "Estimate": "cubic B-spline resampling of the input (no network)",
                  **({"Restored": NOTHING_RESTORED} if nothing_to_restore else {})},
        )
    from bids_mrisr.sr.inference import run_model  # torch is imported only when needed

    start = time.perf_counter()
    result = run_model(volume, options, progress=progress, resume_dir=resume_dir)
    result.info["Seconds"] = round(time.perf_counter() - start, 2)  # for reports and the summary
    return result
