"""Shared fixtures: tiny synthetic head phantoms and BIDS datasets built in tmp."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

REAL_DATA = Path(os.environ.get("BIDS_MRISR_TEST_DATA",
                                Path(__file__).resolve().parents[1].parent / "shared" / "data"
                                / "ds-real"))


def phantom_volume(shape: tuple[int, int, int] = (40, 44, 14), seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'head' with a bright shell, darker core and a few blobs, plus noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.8, 0.85, 0.9), strict=True)))
    data = np.where(radius < 1.0, 600.0, 0.0)
    data += np.where(radius < 0.8, 300.0, 0.0)
    for _ in range(4):
        centre = rng.uniform(-0.4, 0.4, 3)
        blob = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
        data += np.where(blob < 0.15, 250.0, 0.0)
    data += rng.normal(0, 10, shape)
    return np.clip(data, 0, None).astype(np.float32)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_volume(path: Path, data: np.ndarray, zooms: Iterable[float] = (1.0, 1.0, 3.0),
                 dtype: type = np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    image = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


def make_dataset(root: Path, files: dict[str, np.ndarray | bytes | None],
                 description: bool = True) -> Path:
    """Create a BIDS dataset; ``files`` maps relative paths to data (None -> phantom)."""
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "phantom", "BIDSVersion": "1.10.0", "Authors": ["tests"]}))
        (root / "README").write_text("Synthetic phantom dataset for bids_mrisr tests.\n")
    subjects = sorted({rel.split("/")[0] for rel in files})
    (root / "participants.tsv").write_text("participant_id\n" + "\n".join(subjects) + "\n")
    for index, (rel, data) in enumerate(files.items()):
        path = root / rel
        if isinstance(data, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            write_volume(path, phantom_volume(seed=index) if data is None else data)
    return root


@pytest.fixture
def phantom_dataset(tmp_path: Path) -> Path:
    """Two subjects; sub-02 has two sessions, runs, and a T2w and FLAIR."""
    return make_dataset(tmp_path / "bids", {
        "sub-01/anat/sub-01_T1w.nii.gz": None,
        "sub-02/ses-a/anat/sub-02_ses-a_run-1_T1w.nii.gz": None,
        "sub-02/ses-a/anat/sub-02_ses-a_run-2_T1w.nii.gz": None,
        "sub-02/ses-b/anat/sub-02_ses-b_acq-fast_T2w.nii.gz": None,
        "sub-02/ses-b/anat/sub-02_ses-b_FLAIR.nii.gz": None,
    })


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "dataset_description.json").is_file():
        pytest.skip(f"real test data not found at {REAL_DATA} (set BIDS_MRISR_TEST_DATA)")
    return REAL_DATA
