"""Ground-truth volumes for ``bids_mrisr train``: found with pybids, prepared as the app does.

High-resolution T1w/T2w runs of a BIDS dataset (finest spacing <= ``max_spacing``) go through
:func:`bids_mrisr.image.preprocess.preprocess_file`, the app's own preprocessing chain, and are
cached as arrays; bundled volumes (nilearn's MNI152 T1, pydeface's whole-head mean when
installed) add anatomy and a whole-head field of view, offline.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.bids.layout import discover_runs
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.image.preprocess import preprocess_file
from bids_mrisr.runtime.atomic import atomic_write

LOGGER = logging.getLogger("bids_mrisr")


@dataclass
class TrainingVolumes:
    train: list[np.ndarray] = field(default_factory=list)
    train_names: list[str] = field(default_factory=list)
    val: list[np.ndarray] = field(default_factory=list)
    val_names: list[str] = field(default_factory=list)


def bundled_volumes() -> list[tuple[str, Path | nib.Nifti1Image]]:
    """Real volumes that dependencies ship: no download, usable offline."""
    from nilearn.datasets import load_mni152_template

    volumes: list[tuple[str, Path | nib.Nifti1Image]] = [
        ("nilearn-MNI152-T1", load_mni152_template(resolution=1))]
    try:
        import pydeface

        head = Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz"
        if head.is_file():
            volumes.append(("pydeface-mean-head", head))
    except ImportError:
        LOGGER.info("pydeface is not installed: training without its whole-head mean volume")
    return volumes


def prepare_volume(source: Path | nib.Nifti1Image, cache: Path) -> np.ndarray:
    """The app's preprocessing of one volume, as an array on its grid; cached as ``.npy``."""
    cached = cache.with_suffix(".npy")
    if cached.is_file():
        return np.load(cached)
    # Under torchrun every process prepares the volumes: private intermediates, atomic cache.
    folder = cache.with_name(f"{cache.name}.rank{os.environ.get('RANK', '0')}")
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, nib.Nifti1Image):
        path = folder / "input.nii.gz"
        nib.save(source, str(path))
        source = path
    grid = preprocess_file(Path(source), folder).grid_file
    data = np.asanyarray(nib.load(str(grid)).dataobj).astype(np.float32)
    atomic_write(cached, lambda tmp: np.save(tmp, data), suffix=".npy")
    shutil.rmtree(folder, ignore_errors=True)  # the array is all training needs
    return data


def collect_volumes(bids_dir: Path | None, participant_labels: tuple[str, ...],
                    validation_labels: tuple[str, ...], max_spacing: float, bundled: bool,
                    cache: Path) -> TrainingVolumes:
    """Training and held-out volumes; refuses unknown validation labels before any work."""
    volumes = TrainingVolumes()
    validation = set(validation_labels)
    if bids_dir is not None:
        selected = tuple(sorted(set(participant_labels) | validation)) if participant_labels \
            else ()
        runs = discover_runs(bids_dir, selected)
        missing = sorted(validation - {run.subject for run in runs})
        if missing:  # before minutes of preprocessing, not silently training on everything
            raise UserError(f"--validation-label {' '.join(missing)}: no such subject with "
                            f"T1w/T2w runs in {bids_dir}", ExitCode.USAGE)
        for run in runs:
            zooms = nib.load(str(run.path)).header.get_zooms()[:3]
            if min(zooms) > max_spacing:
                LOGGER.info("%s: finest spacing %.2f mm > %.2f mm, not used as ground truth",
                            run.relpath, min(zooms), max_spacing)
                continue
            data = prepare_volume(run.path, cache / run.label)
            if run.subject in validation:
                volumes.val.append(data)
                volumes.val_names.append(run.relpath)
            else:
                volumes.train.append(data)
                volumes.train_names.append(run.relpath)
    if bundled:
        for name, source in bundled_volumes():
            volumes.train.append(prepare_volume(source, cache / name))
            volumes.train_names.append(name)
    if not volumes.train:
        raise UserError("no high-resolution training volumes: give a BIDS dataset with runs at "
                        f"<= {max_spacing} mm or drop --no-bundled", ExitCode.NO_INPUT)
    return volumes
