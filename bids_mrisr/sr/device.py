"""Device choice, precision and CPU threads for inference (no global state leaks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bids_mrisr.sr.options import SRError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> first CUDA device if present, else CPU; unavailable requests fail clearly."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise SRError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise SRError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SRError(f"device {name!r} was requested but no CUDA GPU is available here")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise SRError(f"device {name!r} was requested but only {count} CUDA device(s) exist")
    return dev


def precision_name(device: torch.device) -> str:
    """CUDA runs the networks in bf16 autocast (mixed precision); CPU stays fp32."""
    return "bf16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` intra-op threads for the duration, then restore the previous setting."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise SRError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def free_memory_bytes(device: torch.device) -> int | None:
    """Free accelerator memory, or None on the CPU (where we rely on a fixed default budget)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None
