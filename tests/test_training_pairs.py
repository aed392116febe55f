"""Training pairs and the app's inputs must be the same pair: same geometry, same intensities."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_mrisr.bids.demo import thick_slice_affine
from bids_mrisr.image.normalize import fit_normalisation
from bids_mrisr.image.preprocess import preprocess_file
from bids_mrisr.image.reorient import ras_zooms
from bids_mrisr.sr.degrade import Degradation, degrade
from bids_mrisr.sr.geometry import blurred_axes
from bids_mrisr.sr.pairs import simulate_cubic
from tests.conftest import phantom_volume


@pytest.mark.parametrize(("axis", "factor"), [(2, 3.0), (0, 2.0), (1, 4.0)])
def test_app_preprocessing_gives_the_training_samplers_cubic(tmp_path: Path, axis: int,
                                                             factor: float) -> None:
    hr = phantom_volume((48, 48, 48), seed=1)
    hr = fit_normalisation(hr).apply(hr)  # training volumes are normalised HR scans
    params = Degradation(axis=axis, factor=factor)
    low, zooms = degrade(hr, (1.0, 1.0, 1.0), params)
    image = nib.Nifti1Image(low * 1000, thick_slice_affine(np.eye(4), axis, factor))
    raw = tmp_path / "lowres.nii.gz"
    nib.save(image, str(raw))
    assert blurred_axes(ras_zooms(nib.load(str(raw))), 1.0) == (axis,)

    # The app's preprocessing chain (the one training uses; the nipype nodes run the same).
    prepared = preprocess_file(raw, tmp_path / "chain")
    app = np.asanyarray(nib.load(str(prepared.grid_file)).dataobj)
    assert prepared.resolution == 1.0

    train = simulate_cubic(hr, params, np.random.default_rng(0))
    covered = app.shape[axis]
    assert covered == int(low.shape[axis] * factor)
    train = np.take(train, np.arange(covered), axis=axis)
    head = hr.take(np.arange(covered), axis=axis) > 0.1
    # The same intensity scale, up to what the percentile fit on the LR scan and N4 move ...
    gain, offset = np.polyfit(train[head], app[head], 1)
    assert abs(gain - 1) < 0.1 and abs(offset) < 0.1
    # ... and the same geometry: after that linear map the two agree voxel by voxel, and a
    # one-voxel misplacement is clearly worse.
    err = float(np.median(np.abs(app - (gain * train + offset))[head]))
    assert err < 0.01
    shifted = np.roll(train, 1, axis=axis)
    assert float(np.median(np.abs(app - (gain * shifted + offset))[head])) > 2 * err


def test_training_chain_equals_the_apps_nipype_workflow(tmp_path: Path) -> None:
    """One preprocessing chain: training's function and the app's nodes give the same voxels."""
    from bids_mrisr.workflows.preproc import init_preproc_wf

    raw = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(phantom_volume((40, 44, 14), seed=2) * 3,
                             np.diag([1.0, 1.0, 3.0, 1.0])), str(raw))
    workflow = init_preproc_wf()
    workflow.base_dir = str(tmp_path / "work")
    workflow.inputs.inputnode.in_file = str(raw)
    graph = workflow.run()
    node = next(n for n in graph.nodes() if n.name == "resample")
    from_workflow = nib.load(node.result.outputs.out_file)
    from_chain = nib.load(str(preprocess_file(raw, tmp_path / "chain").grid_file))
    assert np.array_equal(np.asanyarray(from_workflow.dataobj),
                          np.asanyarray(from_chain.dataobj))
    assert np.array_equal(from_workflow.affine, from_chain.affine)
