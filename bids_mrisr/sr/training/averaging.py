"""Averaging the weights of several checkpoints of one network (stochastic weight averaging).

The campaign's EMA snapshots swing from sitting to sitting on the validation volumes (colin27
from +0.9 to +2.3 dB over cubic between steps 101k and 121k), while the training loss barely
moves: if the points lie in one wide basin, the mean of a few sits nearer its centre and may
generalise better than any one point (Izmailov et al. 2018). Measured on this campaign it did
not (`campaign-weight-averages` in benchmarks/EXPERIMENTS.md). The networks use GroupNorm,
not BatchNorm, so an averaged network needs no statistics recomputed: the mean of the weights
is the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bids_mrisr.sr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def average_checkpoints(sources: Sequence[Path], destination: Path,
                        weights: Sequence[float] | None = None) -> str:
    """Write the (weighted) mean of ``sources``' weights to ``destination``; return its sha256.

    Every source must hold the same architecture. ``weights`` (default: equal) are normalised to
    sum to one. The provenance is the last source's, with ``averaged_from`` naming each source's
    step and sha256, so the result can be traced like any other checkpoint."""
    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    if weights is None:
        weights = [1.0] * len(sources)
    if len(weights) != len(sources) or any(w <= 0 for w in weights):
        raise CheckpointError("give one positive weight per checkpoint")
    total = float(sum(weights))
    loaded = [load_checkpoint(s) for s in sources]
    reference = loaded[0]
    for other in loaded[1:]:
        if other.config != reference.config:
            raise CheckpointError(
                f"cannot average {other.path} with {reference.path}: different architectures")
    mean = {name: torch.zeros_like(value, dtype=torch.float64)
            for name, value in reference.model.state_dict().items()}
    for checkpoint, weight in zip(loaded, weights, strict=True):
        for name, value in checkpoint.model.state_dict().items():
            mean[name] += value.double() * (weight / total)
    model = reference.model
    state = model.state_dict()
    model.load_state_dict({name: mean[name].to(state[name].dtype) for name in state})
    provenance = dict(loaded[-1].provenance)
    provenance["averaged_from"] = [
        {"path": str(c.path), "steps": c.provenance.get("steps"), "sha256": c.sha256,
         "weight": w / total}
        for c, w in zip(loaded, weights, strict=True)
    ]
    return save_checkpoint(model, destination, provenance)
