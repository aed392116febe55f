"""The SR node's output is the input scan: normalisation inverted, N4 field put back, no
negative overshoot for magnitude images."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from bids_mrisr.image.normalize import Normalisation
from bids_mrisr.interfaces.superres import super_resolve_file
from bids_mrisr.sr.engine import SROptions


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_interp_output_restores_scale_and_bias_and_clips_overshoot(tmp_path):
    rng = np.random.default_rng(0)
    grid = rng.random((12, 12, 12)).astype(np.float32)
    grid[0, 0, 0] = -0.2  # cubic overshoot below the background
    affine = np.eye(4)
    in_file = _write(tmp_path / "grid.nii", grid, affine)
    # The bias field lives on the reoriented input grid: here 1 x 1 x 3 mm, 4 slices.
    bias_in = np.broadcast_to(np.linspace(0.8, 1.2, 4, dtype=np.float32), (12, 12, 4))
    bias_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    bias_affine[2, 3] = 1.0  # slice centres at 1, 4, 7, 10 mm: edges aligned with the grid
    bias_file = _write(tmp_path / "bias.nii", bias_in, bias_affine)
    params = Normalisation(offset=10.0, scale=100.0)
    params_file = params.to_json(tmp_path / "norm.json")
    out = super_resolve_file(in_file, params_file, SROptions(method="interp"), tmp_path,
                             bias_file=bias_file)
    sr = np.asanyarray(nib.load(str(out["out_file"])).dataobj)
    assert sr.min() >= 0  # a magnitude image never goes negative
    field = sr[1:, :, :] / params.invert(grid)[1:, :, :]
    # The field was multiplied back: smooth along z from ~0.8 to ~1.2, constant in-plane.
    assert abs(float(field[:, :, 0].mean()) - 0.8) < 0.05
    assert abs(float(field[:, :, -1].mean()) - 1.2) < 0.05
    assert float(field.std(axis=(0, 1)).max()) < 1e-3
    info = json.loads(out["info_file"].read_text())
    assert info["BiasFieldRestored"] is True


def test_nothing_is_written_where_a_field_of_view_cut_through_the_face_left_zeros(tmp_path):
    """A head whose face runs out of the field of view, the scanner's zeros beyond: the student
    writes texture there unless the SR node masks it; with the input given, those voxels are
    exactly 0 and every other voxel is bit for bit what the restoration gave."""
    from bids_mrisr.image.resample import resample_to_resolution
    from bids_mrisr.sr.weights import default_weights
    from tests.conftest import phantom_volume

    shape, band = (40, 48, 14), 8
    rng = np.random.default_rng(1)
    head = phantom_volume((40, 64, 14), seed=2)[:, 12:12 + shape[1]]  # face cut at the front
    source = head + np.abs(rng.normal(0, 5, shape)).astype(np.float32) + 1  # noisy air > 0
    source[:, -band:, :] = 0  # beyond the field of view: zeros
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    source_file = _write(tmp_path / "source.nii", source, affine)
    params = Normalisation(offset=0.0, scale=float(np.percentile(source, 99)))
    grid, grid_affine = resample_to_resolution(params.apply(source), affine, 1.0)
    in_file = _write(tmp_path / "grid.nii", grid, grid_affine)
    params_file = params.to_json(tmp_path / "norm.json")
    options = SROptions(method="student", weights=default_weights("student"), threads=1,
                        blurred_axes=(2,), axis_factors=(1.0, 1.0, 3.0))
    outputs = {}
    for name, given in (("masked", source_file), ("unmasked", None)):
        (tmp_path / name).mkdir()
        out = super_resolve_file(in_file, params_file, options, tmp_path / name,
                                 source_file=given)
        outputs[name] = np.asanyarray(nib.load(str(out["out_file"])).dataobj)
    air = np.zeros(grid.shape, bool)
    air[:, -band:, :] = True  # the y axis keeps its 1 mm grid: the band maps onto itself
    assert np.abs(outputs["unmasked"][air]).max() > 0  # the restoration did write there
    assert np.all(outputs["masked"][air] == 0)
    assert np.array_equal(outputs["masked"][~air], outputs["unmasked"][~air])
