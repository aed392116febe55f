"""Noise schedule and DDIM sampler: pure functions, the network is always passed in."""

from bids_mrisr.sr.diffusion.sampler import ddim_sample, ddim_step, respaced_timesteps
from bids_mrisr.sr.diffusion.schedule import (
    NUM_TRAIN_STEPS,
    NoiseSchedule,
    alpha_bar,
    cosine_alpha_bars,
    predict_eps_from_v,
    predict_x0_from_v,
    q_sample,
    v_from_x0_eps,
    v_target,
)

__all__ = [
    "NUM_TRAIN_STEPS",
    "NoiseSchedule",
    "alpha_bar",
    "cosine_alpha_bars",
    "ddim_sample",
    "ddim_step",
    "predict_eps_from_v",
    "predict_x0_from_v",
    "q_sample",
    "respaced_timesteps",
    "v_from_x0_eps",
    "v_target",
]
