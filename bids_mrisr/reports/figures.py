"""Report figures: mosaics of the input and the SR in three planes, the difference, detail crops.

Pure numpy in, PNG files out (matplotlib's Agg backend, no display needed). Every colour map
(difference, uncertainty, gates) carries a colour bar with its numeric range, in the input's
intensity units or as a gate weight; detail crops are marked by a box on the slice they come
from. Volumes are RAS+ arrays on the SR target grid, so the three planes are axis 2 (axial),
1 (coronal), 0 (sagittal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PLANE_AXES = (("axial", 2), ("coronal", 1), ("sagittal", 0))
SLICE_FRACTIONS = (0.35, 0.5, 0.65)
DPI = 80
COLORBAR_INCHES = 1.1  # room under a mosaic for its colour bar and the bar's label
MIN_DIFFERENCE_SCALE = 0.01  # of the input's display range: rounding stays white
DETAIL_SIZE = 64  # px of a detail crop's side
NEAR_TIE = 0.98  # boxes within 2 % of the best detail score count as equally good
AXIS_NAMES = "xyz"  # the RAS+ voxel axes of the grid
MARKER_COLOUR = "yellow"
COLORBAR_LABEL = "colour bar"  # the name of a colour bar's axes
CROP_HEADROOM = 1.15  # a detail crop's window top over its own 99.5th percentile


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
           underlay_window: tuple[float, float] | None = None,
           colorbar: str = "") -> Path:
    """3 planes x 3 positions, one shared window; returns ``path``. With ``underlay``, the
    volume is drawn half-transparent over that anatomy (gating maps over the SR image). With
    ``colorbar`` (its label), a colour bar under the mosaic gives the scale of the colours."""
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(9, 9 + COLORBAR_INCHES * bool(colorbar)),
                             facecolor="black")
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
    height = fig.get_figheight()
    bottom = (COLORBAR_INCHES * bool(colorbar) + 0.09) / height
    fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom,
                        top=1 - (0.72 if title else 0.36) / height, wspace=0.03, hspace=0.12)
    if colorbar:
        _colorbar(fig, cmap, window, colorbar, diverging=window[0] < 0 < window[1])
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="black")
    _plt().close(fig)
    return path


def _number(value: float) -> str:
    """Three significant digits (whole numbers from 100 on), an exponent only below 0.001."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _colorbar(fig, cmap: str, window: tuple[float, float], label: str,
              diverging: bool) -> None:
    """A horizontal colour bar across the bottom of ``fig``, its ends (and 0 when the scale is
    symmetric) labelled with their values: without it a colour map says nothing about size."""
    from matplotlib import cm, colors

    height = fig.get_figheight()
    bar = fig.add_axes((0.2, 0.62 / height, 0.6, 0.2 / height), label=COLORBAR_LABEL)
    mappable = cm.ScalarMappable(colors.Normalize(*window), cmap)
    ticks = [window[0], 0.0, window[1]] if diverging else [window[0], window[1]]
    scale = fig.colorbar(mappable, cax=bar, orientation="horizontal", ticks=ticks)
    scale.ax.set_xticklabels([_number(t) for t in ticks])
    scale.ax.tick_params(colors="white", labelsize=10)
    scale.outline.set_edgecolor("white")
    scale.set_label(label, color="white", fontsize=10)


def difference_mosaic(before: np.ndarray, after: np.ndarray, path: Path) -> Path:
    """SR - cubic, symmetric diverging colours (red: SR brighter), with its colour bar.

    The scale spans at least ``MIN_DIFFERENCE_SCALE`` of the input's display range, so that
    differences of rounding size stay near white instead of filling the map with colour."""
    diff = after - before
    top = display_window(before)[1]
    limit = max(float(np.percentile(np.abs(diff), 99.5)), MIN_DIFFERENCE_SCALE * top)
    largest = float(np.abs(diff).max()) if diff.size else 0.0
    return mosaic(diff, path, (-limit, limit), cmap="RdBu_r",
                  title=f"SR - cubic (largest |difference| {_number(largest)})",
                  colorbar=f"SR - cubic, in the input's intensity units "
                           f"(input display range 0 to {_number(top)})")


def uncertainty_mosaic(std: np.ndarray, path: Path) -> Path:
    """The SD over stochastic draws, with its colour bar in the input's intensity units."""
    top = float(np.percentile(std, 99.5)) or 1.0
    return mosaic(std, path, (0.0, top), cmap="magma", title="uncertainty (SD over draws)",
                  colorbar="SD over draws, in the input's intensity units")


def gate_mosaic(gate: np.ndarray, path: Path, expert: str, anatomy: np.ndarray,
                anatomy_window: tuple[float, float]) -> Path:
    """One expert's gate over the SR image, with a 0..1 colour bar of the gate weight."""
    return mosaic(gate, path, (0.0, 1.0), cmap="viridis",
                  title=f"gate: {expert} (over the SR image)", underlay=anatomy,
                  underlay_window=anatomy_window,
                  colorbar=f"gate weight of {expert} (0: not used, 1: this expert alone)")


@dataclass(frozen=True)
class DetailRegion:
    """Where detail crops come from: one slice and a box on it, in display pixels (rows from
    the top of the radiological view, columns from its left)."""

    slice_axis: int
    index: int
    top: int
    left: int
    rows: int
    cols: int

    def view(self, volume: np.ndarray) -> np.ndarray:
        """The whole slice, as the mosaics show it."""
        return np.take(volume, self.index, axis=self.slice_axis).T[::-1]

    def crop(self, volume: np.ndarray) -> np.ndarray:
        return self.view(volume)[self.top: self.top + self.rows,
                                 self.left: self.left + self.cols]

    def describe(self, shape: tuple[int, ...]) -> tuple[str, str]:
        """(the slice, the box) in voxels of the grid: where in the head the crop is."""
        across, down = (a for a in range(3) if a != self.slice_axis)
        bottom = shape[down] - self.top - self.rows  # display rows run down, voxels up
        plane = dict((axis, name) for name, axis in PLANE_AXES)[self.slice_axis]
        return (f"{plane} slice {AXIS_NAMES[self.slice_axis]} = {self.index} "
                f"of {shape[self.slice_axis]}",
                f"box {AXIS_NAMES[across]} {self.left}-{self.left + self.cols - 1}, "
                f"{AXIS_NAMES[down]} {bottom}-{bottom + self.rows - 1}")


def _box_sums(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sum of ``image`` over every rows x cols box, indexed by the box's top-left corner."""
    total = np.pad(image.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (total[rows:, cols:] - total[:-rows, cols:] - total[rows:, :-cols]
            + total[:-rows, :-cols])


def locate_detail(before: np.ndarray, after: np.ndarray, axis: int | None) -> DetailRegion:
    """The middle slice of a plane that contains the restored ``axis``, and on it the box (at
    most ``DETAIL_SIZE`` px) in the head where the restoration changed the image most; with
    no change at all, the box holding the most head. Near-ties go to the box nearest the
    centre, so equal regions give the same, central, choice."""
    slice_axis = 1 if axis in (None, 0, 2) else 0
    probe = DetailRegion(slice_axis, before.shape[slice_axis] // 2, 0, 0, 0, 0)
    reference = probe.view(before)
    rows, cols = (min(DETAIL_SIZE, n) for n in reference.shape)
    head = (reference > 0.1 * display_window(before)[1]).astype(np.float64)
    score = _box_sums(np.abs(probe.view(after) - reference) * head, rows, cols)
    if not score.max() > 0:
        score = _box_sums(head, rows, cols)
    grid = np.indices(score.shape)
    centre = np.hypot(grid[0] - (score.shape[0] - 1) / 2, grid[1] - (score.shape[1] - 1) / 2)
    near_best = score >= NEAR_TIE * score.max()
    top, left = np.unravel_index(np.argmin(np.where(near_best, centre, np.inf)), score.shape)
    return DetailRegion(slice_axis, probe.index, int(top), int(left), rows, cols)


def crop_window(crop: np.ndarray, window: tuple[float, float]) -> tuple[float, float]:
    """The display window of a detail crop: the full view's black level, its top a little
    above the region's own brightest 0.5 % (its brightest tissue light grey, not clipped); a
    window made for the whole head, set by fat or vessels, leaves a deep region dim."""
    top = CROP_HEADROOM * float(np.percentile(crop, 99.5)) if crop.size else window[1]
    return (window[0], min(top, window[1])) if top > window[0] else window


def detail_crops(before: np.ndarray, after: np.ndarray, axis: int | None, path: Path,
                 window: tuple[float, float]) -> Path:
    """The same region of both volumes, marked on the full slice it comes from."""
    return side_by_side_crops([before, after], ["input (cubic)", "super-resolved"], axis, path,
                              window)


def side_by_side_crops(volumes: list[np.ndarray], labels: list[str], axis: int | None,
                       path: Path, window: tuple[float, float]) -> Path:
    """The full slice of ``volumes[0]`` (in ``window``) with the crop box drawn and its
    place written under it, then the same box of each volume in a window of the region's own
    intensities. The box is where the last volume differs most from the one before it (the
    input and its restoration)."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    region = locate_detail(volumes[-2] if len(volumes) > 1 else volumes[0], volumes[-1], axis)
    zoom = crop_window(region.crop(volumes[0]), window)
    where, box = region.describe(volumes[0].shape)
    fig, axes = plt.subplots(1, len(volumes) + 1, figsize=(3.6 * (len(volumes) + 1), 4.2),
                             facecolor="black")
    full = axes[0]
    full.imshow(region.view(volumes[0]), cmap="gray", vmin=window[0], vmax=window[1],
                interpolation="nearest")
    full.add_patch(Rectangle((region.left - 0.5, region.top - 0.5), region.cols, region.rows,
                             fill=False, edgecolor=MARKER_COLOUR, linewidth=2))
    full.set_title(f"{labels[0]}: {where}", color="white", fontsize=9)
    full.set_xlabel(f"{box} (yellow)", color=MARKER_COLOUR, fontsize=9)
    for ax, vol, label in zip(axes[1:], volumes, labels, strict=True):
        ax.imshow(region.crop(vol), cmap="gray", vmin=zoom[0], vmax=zoom[1],
                  interpolation="nearest")
        ax.set_title(label, color="white", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(MARKER_COLOUR if ax is not full else "black")
    fig.suptitle(f"crops: window {_number(zoom[0])} to {_number(zoom[1])} "
                 f"(full slice: {_number(window[0])} to {_number(window[1])})",
                 color="white", fontsize=9, y=0.04)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.14, top=0.9, wspace=0.04)
    return _save(fig, path)
