"""Report figures: mosaics of the input and the SR in three planes, the difference, detail crops.

Pure numpy in, PNG files out (matplotlib's Agg backend, no display needed). Volumes are RAS+
arrays on the SR target grid, so the three planes are axis 2 (axial), 1 (coronal), 0 (sagittal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLANE_AXES = (("axial", 2), ("coronal", 1), ("sagittal", 0))
SLICE_FRACTIONS = (0.35, 0.5, 0.65)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_window(volume: np.ndarray) -> tuple[float, float]:
    """Robust grey-level window shared by the images that are compared."""
    values = volume[volume > np.percentile(volume, 50)]
    top = float(np.percentile(values, 99.5)) if values.size else float(volume.max())
    return 0.0, max(top, 1e-6)


def _slices(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, axis in PLANE_AXES:
        for frac in SLICE_FRACTIONS:
            index = int(round(frac * (volume.shape[axis] - 1)))
            plane = volume[(slice(None),) * axis + (index,)]  # a view, not a copy
            out.append((name, plane.T[::-1]))  # RAS -> radiological
    return out


def mosaic(volume: np.ndarray, path: Path, window: tuple[float, float], cmap: str = "gray",
           title: str = "", underlay: np.ndarray | None = None,
           underlay_window: tuple[float, float] | None = None) -> Path:
    """3 planes x 3 positions, one shared window; returns ``path``. With ``underlay``, the
    volume is drawn half-transparent over that anatomy (gating maps over the SR image)."""
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(9, 9), facecolor="black")
    anatomy = _slices(underlay) if underlay is not None else [None] * 9
    if underlay is not None and underlay_window is None:
        underlay_window = display_window(underlay)
    for ax, (name, image), below in zip(axes.ravel(), _slices(volume), anatomy, strict=True):
        alpha = 1.0
        if below is not None:
            ax.imshow(below[1], cmap="gray", vmin=underlay_window[0], vmax=underlay_window[1],
                      interpolation="nearest")
            alpha = 0.55
        ax.imshow(image, cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest",
                  alpha=alpha)
        ax.set_axis_off()
        ax.set_title(name, color="white", fontsize=8)
    if title:
        fig.suptitle(title, color="white")
    # Fixed margins: tight_layout measured every label and cost a third of the report's time.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92 if title else 0.96,
                        wspace=0.03, hspace=0.12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def detail_crops(before: np.ndarray, after: np.ndarray, axis: int | None, path: Path,
                 window: tuple[float, float]) -> Path:
    """The same 64 px region of both volumes, in a plane that contains the restored axis."""
    return side_by_side_crops([before, after], ["input (cubic)", "super-resolved"], axis, path,
                              window)


def side_by_side_crops(volumes: list[np.ndarray], labels: list[str], axis: int | None,
                       path: Path, window: tuple[float, float]) -> Path:
    """The same 64 px region of each volume, in a plane that contains ``axis``."""
    plt = _plt()
    slice_axis = 1 if axis in (None, 0, 2) else 0  # a plane that contains ``axis``
    index = volumes[0].shape[slice_axis] // 2
    crops = []
    for vol in volumes:
        image = np.take(vol, index, axis=slice_axis).T[::-1]
        cy, cx = image.shape[0] // 2, image.shape[1] // 2
        crops.append(image[max(cy - 32, 0): cy + 32, max(cx - 32, 0): cx + 32])
    fig, axes = plt.subplots(1, len(volumes), figsize=(4 * len(volumes), 4), facecolor="black")
    for ax, crop, label in zip(np.atleast_1d(axes), crops, labels, strict=True):
        ax.imshow(crop, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(label, color="white", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def difference_mosaic(before: np.ndarray, after: np.ndarray, path: Path) -> Path:
    """SR - cubic, symmetric diverging colours (red: SR brighter)."""
    diff = after - before
    limit = float(np.percentile(np.abs(diff), 99.5)) or 1.0
    return mosaic(diff, path, (-limit, limit), cmap="RdBu_r", title="SR - cubic")
