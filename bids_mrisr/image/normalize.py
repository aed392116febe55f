"""Robust intensity normalisation, invertible so outputs return to the input's scale.

The networks see intensities where the background is ~0 and bright tissue ~1, whatever the
scanner, bit depth or scaling of the input. The two parameters are kept in a JSON file so the
super-resolved volume can be mapped back exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.image.io import float_image, save_nifti

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


@dataclass(frozen=True)
class Normalisation:
    """``normalised = (raw - offset) / scale``."""

    offset: float
    scale: float
    low_percentile: float = LOW_PERCENTILE
    high_percentile: float = HIGH_PERCENTILE

    def apply(self, data: np.ndarray) -> np.ndarray:
        return ((np.asarray(data, dtype=np.float32) - self.offset) / self.scale).astype(np.float32)

    def invert(self, data: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """``raw = normalised * scale + offset``; ``in_place`` reuses a float32 ``data`` buffer."""
        raw = np.asarray(data, dtype=np.float32) if in_place else np.array(data, dtype=np.float32)
        raw *= self.scale
        raw += self.offset
        return raw

    def to_json(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2))
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> Normalisation:
        return cls(**json.loads(Path(path).read_text()))


def fit_normalisation(data: np.ndarray) -> Normalisation:
    """Percentiles of the foreground (voxels above a small fraction of the bright end)."""
    values = np.asarray(data, dtype=np.float32).ravel()
    low, bright = (float(v) for v in np.percentile(values, [LOW_PERCENTILE, 99.9]))
    foreground = values[values > low + 0.05 * (bright - low)]
    if foreground.size < 16:
        foreground = values
    high = float(np.percentile(foreground, HIGH_PERCENTILE))
    scale = high - low
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.max(np.abs(values))) or 1.0
        low = 0.0
    return Normalisation(offset=low, scale=scale)


def normalise_file(in_file: Path, out_file: Path, params_file: Path) -> tuple[Path, Path]:
    image = nib.load(str(in_file))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    params = fit_normalisation(data)
    save_nifti(float_image(params.apply(data), image), Path(out_file))
    return Path(out_file), params.to_json(Path(params_file))
