"""Tile geometry: every pixel covered, no empty tile, windows on the grid, for awkward sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bids_mrisr.sr.slicing import plan_tiles, tile_starts


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "align"),
    list(itertools.product((37, 64, 100, 256), (32, 64, 96), (0, 16), (1, 8, 32, 64))),
)
def test_tiles_cover_without_gaps_or_empty_tiles(length, tile, overlap, align):
    if tile < length and tile < align:
        with pytest.raises(ValueError, match="smaller than the grid alignment"):
            tile_starts(length, tile, overlap, align)
        return
    starts = tile_starts(length, tile, overlap, align)
    covered = np.zeros(length, bool)
    for start in starts:
        assert 0 <= start < length and start % align == 0
        covered[start : min(start + tile, length)] = True
    assert covered.all()


def test_blend_weights_sum_to_one_over_the_slice():
    tiles = plan_tiles(100, 77, tile=32, overlap=16, halo=16, align=16)
    total = np.zeros((100, 77), np.float32)
    for tile in tiles:
        assert tile.weight.numel() > 0
        total[tile.core] += tile.weight.numpy()
    assert total.min() > 0.99 and total.max() < 1.01
    assert all(t.window[0].start % 16 == 0 and t.window[1].start % 16 == 0 for t in tiles)
