"""The preprocessing chain as one function: what ``workflows/preproc.py`` runs node by node.

Training uses it to prepare its ground truth exactly as the app prepares an input (same
functions, same order, same defaults: RAS+, N4 with shrink factor 4, robust normalisation,
cubic B-spline onto the default grid), so a training pair and an inference input can never
drift apart; ``tests/test_training_pairs.py`` compares it with the nipype workflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bids_mrisr.image.n4 import n4_correct
from bids_mrisr.image.normalize import normalise_file
from bids_mrisr.image.reorient import reorient_to_ras
from bids_mrisr.image.resample import resample_file

N4_SHRINK_FACTOR = 4


@dataclass(frozen=True)
class Preprocessed:
    grid_file: Path
    """Normalised volume on the isotropic target grid."""
    params_file: Path
    bias_field: Path
    resolution: float


def preprocess_file(in_file: Path, folder: Path, output_resolution: float | None = None,
                    threads: int = 1) -> Preprocessed:
    """Run the chain on ``in_file``, writing its intermediates into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ras = reorient_to_ras(Path(in_file), folder / "reoriented.nii")
    corrected, bias = n4_correct(ras, folder / "n4.nii", bias_file=folder / "bias_field.nii",
                                 shrink_factor=N4_SHRINK_FACTOR, threads=threads)
    normalised, params = normalise_file(corrected, folder / "normalised.nii",
                                        folder / "normalisation.json")
    grid, resolution = resample_file(normalised, folder / "target_grid.nii", output_resolution)
    return Preprocessed(grid, params, bias, resolution)
