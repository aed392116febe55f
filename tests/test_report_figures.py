"""Report figures: colour bars with their numbers, detail crops placed, marked and lit."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bids_mrisr.reports import figures
from tests.conftest import phantom_volume


@pytest.fixture
def drawn(monkeypatch):
    """Keeps each figure instead of saving it: its texts, images and patches can be read."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _colour_bar(fig):
    """The one horizontal colour-bar axes of ``fig``: (tick labels, axis label)."""
    bars = [ax for ax in fig.axes if ax.get_label() == figures.COLORBAR_LABEL]
    assert len(bars) == 1, "no colour bar"
    ticks = [t.get_text() for t in bars[0].get_xticklabels()]
    return ticks, bars[0].get_xlabel()


def test_difference_of_rounding_size_gets_a_scale_that_shows_nothing(drawn, tmp_path):
    before = phantom_volume((24, 26, 20))
    after = before + np.float32(0.004) * np.sign(np.sin(np.arange(before.size))).reshape(
        before.shape).astype(np.float32)
    figures.difference_mosaic(before, after, tmp_path / "d.png")
    ticks, label = _colour_bar(drawn[0])
    top = figures.display_window(before)[1]
    floor = figures._number(figures.MIN_DIFFERENCE_SCALE * top)
    assert ticks == [f"-{floor}", "0", floor]  # 1 % of the input's range, not +-0.004
    assert "input's intensity units" in label and figures._number(top) in label
    assert any("largest |difference| 0.004" in t for t in _texts(drawn[0]))


def test_a_real_difference_sets_its_own_scale(drawn, tmp_path):
    before = phantom_volume((24, 26, 20))
    after = before.copy()
    after[8:16, 8:16, 6:14] += 300.0
    figures.difference_mosaic(before, after, tmp_path / "d.png")
    ticks, _ = _colour_bar(drawn[0])
    limit = float(np.percentile(np.abs(after - before), 99.5))
    assert limit > figures.MIN_DIFFERENCE_SCALE * figures.display_window(before)[1]
    assert ticks == [f"-{figures._number(limit)}", "0", figures._number(limit)]


def test_uncertainty_and_gate_maps_carry_their_scales(drawn, tmp_path):
    volume = phantom_volume((24, 26, 20))
    std = np.abs(np.random.default_rng(1).normal(0, 5, volume.shape)).astype(np.float32)
    figures.uncertainty_mosaic(std, tmp_path / "u.png")
    ticks, label = _colour_bar(drawn[0])
    assert ticks == ["0", figures._number(float(np.percentile(std, 99.5)))]
    assert "input's intensity units" in label
    gate = np.clip(volume / volume.max(), 0, 1)
    figures.gate_mosaic(gate, tmp_path / "g.png", "edges", volume,
                        figures.display_window(volume))
    ticks, label = _colour_bar(drawn[1])
    assert ticks == ["0", "1"] and "gate weight of edges" in label


def test_colour_bar_is_drawn_in_the_png(tmp_path):
    """The saved picture itself: a row under the mosaic runs from blue through white to red."""
    from PIL import Image

    before = phantom_volume((24, 26, 20))
    after = before.copy()
    after[8:16, 8:16, 6:14] += 300.0
    pixels = np.asarray(Image.open(figures.difference_mosaic(before, after, tmp_path / "d.png"))
                        .convert("RGB")).astype(int)
    band = pixels[-int(figures.COLORBAR_INCHES * figures.DPI):]
    red_minus_blue = band[..., 0] - band[..., 2]
    rows = [r for r in red_minus_blue if (r < -100).sum() > 50 and (r > 100).sum() > 50]
    assert rows, "no blue-to-red colour bar under the mosaic"
    row = rows[len(rows) // 2]
    assert np.flatnonzero(row < -100).mean() < np.flatnonzero(row > 100).mean()  # blue left


def test_detail_box_goes_where_the_restoration_changed_the_image(tmp_path):
    before = phantom_volume((80, 90, 70))
    after = before.copy()
    after[50:60, 40:50, 15:25] += 200.0  # one changed spot, off the centre of the slice
    region = figures.locate_detail(before, after, axis=2)
    assert region.slice_axis == 1 and region.rows == region.cols == figures.DETAIL_SIZE
    assert 40 <= region.index < 50  # the middle coronal slice goes through the spot
    changed = (after - before)[:, region.index]
    assert changed.sum() > 0 and region.crop(after - before).sum() == changed.sum()


def test_detail_box_is_described_in_voxels_of_the_grid():
    shape = (80, 90, 70)
    before = phantom_volume(shape)
    after = before.copy()
    after[10:20, 40:50, 50:60] += 200.0
    region = figures.locate_detail(before, after, axis=2)
    where, box = region.describe(shape)
    assert where == f"coronal slice y = {region.index} of {shape[1]}"
    x0, x1, z0, z1 = map(int, re.fullmatch(r"box x (\d+)-(\d+), z (\d+)-(\d+)", box).groups())
    grid = np.indices(shape)
    assert (region.crop(grid[0]).min(), region.crop(grid[0]).max()) == (x0, x1)
    assert (region.crop(grid[2]).min(), region.crop(grid[2]).max()) == (z0, z1)
    assert (region.crop(grid[1]) == region.index).all()


def test_without_any_change_the_box_sits_in_the_middle_of_the_head():
    before = phantom_volume((100, 100, 60))
    region = figures.locate_detail(before, before, axis=None)
    centre_row = region.top + region.rows / 2
    centre_col = region.left + region.cols / 2
    view = region.view(before)
    assert abs(centre_row - view.shape[0] / 2) <= 2 and abs(centre_col - view.shape[1] / 2) <= 2


def test_detail_crop_is_lit_by_its_own_window_and_marked_on_the_full_slice(drawn, tmp_path):
    before = phantom_volume((80, 90, 70))
    before[:6] = 2 * before.max()  # a bright slab far from the crop (fat) sets the head's window
    after = before.copy()
    after[35:45, 40:50, 30:40] += 50.0
    window = figures.display_window(before)
    figures.detail_crops(before, after, 2, tmp_path / "detail.png", window)
    fig = drawn[0]
    full, crop_in, crop_sr = fig.axes
    region = figures.locate_detail(before, after, 2)
    box = full.patches[0]
    assert (box.get_x() + 0.5, box.get_y() + 0.5) == (region.left, region.top)
    assert (box.get_width(), box.get_height()) == (region.cols, region.rows)
    assert any(region.describe(before.shape)[1] in t for t in _texts(fig))
    shown = crop_in.images[0]
    low, high = shown.get_clim()
    assert crop_sr.images[0].get_clim() == (low, high)  # both crops in one window
    crop = region.crop(before)
    assert high < window[1]  # not the whole head's window
    assert np.median((crop - low) / (high - low)) > 0.4  # the region is mid-grey, not dark
    assert np.mean(crop > high) < 0.01  # and hardly clipped


def test_before_after_markup_keeps_both_for_print_without_a_browser():
    """Where chromium is absent: both mosaics sit in the side-by-side block, the print rules
    hide only the interactive flip, and the flip's two images share one frame."""
    from bids_mrisr.reports.html import STYLE, _before_after

    block = _before_after(3, "b.png", "a.png")
    pair, flip = block.split('<div class="flip"')
    assert 'id="pair-3"' in pair and 'src="b.png"' in pair and 'src="a.png"' in pair
    frame = flip.split('<div class="frame">')[1]
    assert frame.count("<img") == 2 and "<script" not in block
    printing = re.search(r"@media print\{(.*?)\}\s*\}", STYLE, re.DOTALL).group(1)
    hidden = re.findall(r"([^{}]+)\{display:none\}", printing)
    assert any(".flip" in rule for rule in hidden)
    assert not any(".pair" in rule or "figure" in rule for rule in hidden)
