"""Finished slice batches of one SR call, kept on disk so an interrupted call resumes.

The engine restores a volume batch by batch (per flipped view, pass and plane); each batch's
result is saved atomically under a key of everything that decides it: the input voxels, the
network's weights (adapted or not), the options, the plan of batches and tiles, the device,
the threads and the code version. A rerun with the same key loads the batches it finds instead
of computing them, and adds them in the same order, so the output is byte-identical; any other
key starts afresh and deletes the stale batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_mrisr import __version__
from bids_mrisr.runtime.atomic import atomic_write

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
"""Residual mean, its spread over draws (or None) and the fused gates (or None) of a batch."""
_PARTS = ("mean", "std", "gates")


def resume_key(volume: np.ndarray, model: torch.nn.Module, settings: Iterable[Any]) -> str:
    """sha256 of the input voxels, the network's parameters and ``settings`` (their repr)."""
    digest = hashlib.sha256(__version__.encode())
    digest.update(repr(volume.shape).encode())
    digest.update(np.ascontiguousarray(volume, dtype=np.float32).tobytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for item in settings:
        digest.update(repr(dataclasses.asdict(item) if dataclasses.is_dataclass(item)
                           else item).encode())
    return digest.hexdigest()


class BatchStore:
    """Saved batches under ``folder/<key>``; ``folder`` None keeps nothing (plain calls)."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder = None if folder is None else Path(folder) / key[:32]
        self.reused = 0
        self.computed = 0
        if folder is not None and Path(folder).is_dir():
            for stale in Path(folder).iterdir():  # another input or options: never reused
                if stale == self.folder:
                    continue
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    def batch(self, name: str, compute: Callable[[], Batch], stats: dict[str, int],
              replay: Callable[[], None]) -> Batch:
        """The batch ``name``: loaded if a previous call finished it (``replay`` then stands
        in for its progress ticks), else computed and saved with its expert counts."""
        path = None if self.folder is None else self.folder / f"{name}.npz"
        if path is not None and path.is_file():
            with np.load(path) as saved:
                for key in stats:
                    stats[key] += int(saved[f"stat_{key}"])
                batch = tuple(saved[part] if part in saved else None for part in _PARTS)
            self.reused += 1
            replay()
            return batch  # type: ignore[return-value]
        before = dict(stats)
        batch = compute()
        self.computed += 1
        if path is not None:
            arrays = {part: value for part, value in zip(_PARTS, batch, strict=True)
                      if value is not None}
            arrays.update({f"stat_{key}": np.int64(stats[key] - before[key]) for key in stats})
            atomic_write(path, lambda tmp: _save_npz(tmp, arrays))
        return batch

    def report(self) -> None:
        if self.folder is not None and self.reused:
            log.info("resumed an interrupted super-resolution: %d of %d slice batches were "
                     "already done", self.reused, self.reused + self.computed)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
