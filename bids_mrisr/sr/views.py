"""The views and passes over the volume: each flipped view, each restoration pass (one thick
axis at a time), each plane's batches of slices (:func:`bids_mrisr.sr.passes.sample_batch`),
summed and averaged; finished batches can be kept and replayed (``sr/resume.py``)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from bids_mrisr.sr import slicing
from bids_mrisr.sr.passes import Arrays, Batch, Geometry, Sampling, sample_batch
from bids_mrisr.sr.resume import BatchStore


def _restore_plane(run: Sampling, geometry: Geometry, current: torch.Tensor, i: int, p: str,
                   code: torch.Tensor | None, sums: tuple[np.ndarray, np.ndarray | None],
                   flips: tuple[int, ...], gates_acc: np.ndarray | None,
                   store: BatchStore | None) -> None:
    """Every batch of one plane of pass ``i`` (told ``code``), added into ``sums`` (image,
    std) and ``gates_acc`` (written through this view's flips)."""
    thick = geometry.axes[i]
    axis = slicing.PLANE_AXES[p]
    planar = slicing.planar_view(current, axis, thick)
    plan = geometry.plans[(i, p)]
    view_name = "view" + ("".join(map(str, flips)) or "-")
    out, unc = sums
    for sl in slicing.batches(planar.shape[0], plan.batch_size):
        def compute(sl: range = sl) -> Arrays:
            cond = slicing.condition_stack(planar, sl, run.context).to(run.device).contiguous(
                memory_format=torch.channels_last)
            return sample_batch(run, Batch(cond, sl, p, plan, i,
                                           None if code is None else code.to(run.device)))

        res, std, gates = compute() if store is None else store.batch(
            f"{view_name}_pass{i}_{p}_{sl.start}-{sl.stop}", compute, run.counter.stats,
            functools.partial(_replay, run))
        centre = planar[sl.start : sl.stop].numpy()
        slicing.planar_view(out, axis, thick)[sl.start : sl.stop] += centre + res / run.scale
        if unc is not None and std is not None:
            slicing.planar_view(unc, axis, thick)[sl.start : sl.stop] += std / run.scale
        if gates_acc is not None and gates is not None:
            for e in range(run.k):  # written through, in this view's flips
                g_view = slicing.planar_view(np.flip(gates_acc[e], flips), axis, thick)
                g_view[sl.start : sl.stop] += gates[:, e]


def _replay(run: Sampling) -> None:
    """The progress ticks of a batch loaded instead of computed."""
    for _ in range(run.n * run.steps):
        run.counter.tick()


def restore_view(run: Sampling, geometry: Geometry, current: np.ndarray,
                 flips: tuple[int, ...], gates_acc: np.ndarray | None,
                 store: BatchStore | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Every pass over one view of the volume (``flips`` applied): the image and its summed
    variance, in the view's orientation; gates go straight into ``gates_acc``."""
    unc_sq = np.zeros_like(current) if run.n > 1 else None
    shape = current.shape
    with torch.inference_mode():
        for i in range(len(geometry.axes)):
            out = np.zeros(shape, np.float32)
            unc = np.zeros(shape, np.float32) if run.n > 1 else None
            vol_t = torch.from_numpy(current)
            code = geometry.code(i, current)
            for p in geometry.planes[i]:
                _restore_plane(run, geometry, vol_t, i, p, code, (out, unc), flips, gates_acc,
                               store)
            inv = np.float32(1.0 / len(geometry.planes[i]))
            out *= inv
            if unc is not None and unc_sq is not None:
                unc *= inv
                unc_sq += unc * unc  # passes add independent variances
            del vol_t
            current = out
    return current, unc_sq


def restore_views(run: Sampling, geometry: Geometry, volume: np.ndarray,
                  views: tuple[tuple[int, ...], ...], gates_acc: np.ndarray | None,
                  store: BatchStore | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean restoration over the flipped views, and its std (N > 1 draws) or None."""
    image: np.ndarray | None = None
    unc_sq: np.ndarray | None = None
    for flips in views:  # each view is flipped in, restored, and flipped back
        view = np.ascontiguousarray(np.flip(volume, flips)) if flips else volume
        restored, var = restore_view(run, geometry, view, flips, gates_acc, store)
        del view
        if flips:
            restored = np.flip(restored, flips)
            var = None if var is None else np.flip(var, flips)
        if image is None:
            image, unc_sq = np.ascontiguousarray(restored), var
        else:
            image += restored
            if unc_sq is not None and var is not None:
                unc_sq += var
    if len(views) > 1:  # mean image; mean variance of the views
        image *= np.float32(1.0 / len(views))
        if unc_sq is not None:
            unc_sq *= np.float32(1.0 / len(views))
    return image, np.sqrt(unc_sq, out=unc_sq) if unc_sq is not None else None
