"""Multi-process training under ``torchrun``: process group, ranks, per-rank seeds.

``torchrun --nproc-per-node N -m bids_mrisr.cli.run train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; each process then draws its own crops (seed + rank), DDP averages the
gradients, and rank 0 alone validates and writes checkpoints. NCCL on GPUs, gloo on CPUs (the
test suite runs two CPU processes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Rank:
    """The rank torchrun describes in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Rank(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """Join (and finally leave) the default process group when there are several processes."""
    if rank.world_size == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def training_device(name: str, rank: Rank) -> torch.device:
    """``auto``/``cuda`` -> this process's GPU (by local rank) when CUDA exists, else CPU."""
    from bids_mrisr.sr.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank.local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
