"""Denoising networks: the MoEDiff-SR teacher, the distilled student, and their config."""

from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model, count_parameters, estimate_flops_per_pixel
from bids_mrisr.sr.networks.moe import MoETeacher
from bids_mrisr.sr.networks.student import StudentDenoiser

__all__ = [
    "ModelConfig",
    "MoETeacher",
    "StudentDenoiser",
    "build_model",
    "count_parameters",
    "estimate_flops_per_pixel",
]
