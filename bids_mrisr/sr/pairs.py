"""Training pairs: simulated thick-slice acquisitions, cubic-upsampled back to the HR grid.

Shared by training (``sr/training/``) and per-scan adaptation at inference (``sr/adapt.py``),
so that both draw their pairs from one pipeline and the inference path imports no training code.

The networks work on the cubic-upsampled volume (the app resamples every input onto the target
grid first), so a training pair is (condition stack of 2m+1 slices of the upsampled volume,
scaled residual ``(HR - cubic) * residual_scale`` at the centre slice).

Crops are cut as the app cuts slices: in a plane that contains the thick axis, with the thick
axis along the rows (:func:`bids_mrisr.sr.slicing.planar_view`). The app reads the thick axis
from the header, so the network never has to guess which direction is blurred.

A bias field, when drawn, multiplies the target as well as the input: at inference N4 has
removed most of it already, and what is left is in both; the network must not learn to guess a
smooth correction it cannot see in a crop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from bids_mrisr.image.spline import cubic_resample, cubic_resample_axis
from bids_mrisr.sr.acquisition import pass_noise_sigma
from bids_mrisr.sr.degrade import PROFILES, Degradation, degrade, smooth_bias_field
from bids_mrisr.sr.networks.config import ACQUISITION_FEATURES, SCAN_FEATURES, acquisition_code
from bids_mrisr.sr.options import UNKNOWN
from bids_mrisr.sr.slicing import planar_view

FOREGROUND_THRESHOLD = 0.05
"""Normalised intensity above which a voxel counts as head (not background)."""
MIN_FOREGROUND = 0.10
"""Crops with less than this fraction of head voxels (i.e. >90% background) are redrawn."""
UNKNOWN_PROFILE_RATE = 0.2
"""Share of crops whose acquisition code says "profile unknown" (the app's fallback when the
scan gives no single thick axis), so that the code's 0 is a trained input."""
UNKNOWN_WIDTH_RATE = 0.5
"""Share of crops whose code says "slice width unknown": most scans have no SliceThickness."""


Entry = tuple[np.ndarray, np.ndarray, Degradation]
"""A pool entry: (target, cubic estimate, degradation)."""


def zoom_volume(hr: np.ndarray, zoom: float) -> np.ndarray:
    """``hr`` resampled by ``zoom`` along every axis (cubic B-spline; below 1 the anatomy
    shrinks, as a smaller head or a coarser reference grid would show it)."""
    if np.isclose(zoom, 1.0):
        return hr
    shape = tuple(max(8, int(round(n * zoom))) for n in hr.shape)
    return np.clip(cubic_resample(hr, (zoom,) * 3, shape), 0, None)


def simulate_cubic(hr: np.ndarray, params: Degradation, rng: np.random.Generator,
                   bits: int | None = None, also: tuple[int, ...] = ()) -> np.ndarray:
    """Degrade ``hr`` (1 mm grid) with ``params``, quantise, and cubic-upsample it back.

    ``also``: further axes acquired as coarsely as ``params.axis`` (an isotropic coarse scan),
    with the noise added once, on the low-resolution voxels, as a scanner does."""
    low = hr
    for axis in also:
        low, _ = degrade(low, (1.0, 1.0, 1.0), dataclasses.replace(
            params, axis=axis, noise_fraction=0.0, inplane_sigma_vox=0.0), rng)
    low, _ = degrade(low, (1.0, 1.0, 1.0), params, rng)
    if bits:
        top = float(np.percentile(low, 99.9)) or 1.0
        levels = 2**bits - 1
        low = (np.round(np.clip(low / top, 0, None) * levels) / levels * top).astype(np.float32)
    for axis in (params.axis, *also):
        low = cubic_resample_axis(low, axis, params.factor, hr.shape[axis])
    return low


def coarse_along(hr: np.ndarray, params: Degradation, axes: tuple[int, ...]) -> np.ndarray:
    """``hr`` acquired coarsely along ``axes`` (``params``' factor and profile, no noise) and
    cubic-upsampled back: the target of a pass that restores one axis of an isotropic coarse
    scan while the axes the app restores after it stay as they are."""
    clean = dataclasses.replace(params, noise_fraction=0.0, bias_strength=0.0,
                                inplane_sigma_vox=0.0)
    out = hr
    for axis in axes:
        low, _ = degrade(out, (1.0, 1.0, 1.0), dataclasses.replace(clean, axis=axis))
        out = cubic_resample_axis(low, axis, params.factor, hr.shape[axis])
    return out


def degradation_family(factor_range: tuple[float, float],
                       zoom_range: tuple[float, float] = (1.0, 1.0),
                       multi_axis_rate: float = 0.0,
                       profiles: tuple[str, ...] = PROFILES) -> dict:
    """The ranges :meth:`PairSampler.random_degradation` draws from (training provenance)."""
    return {"factor_range": list(factor_range), "zoom_range": list(zoom_range),
            "multi_axis_rate": multi_axis_rate,
            "profiles": list(profiles),
            "thickness_ratio": [0.8, 1.3], "inplane_sigma_vox": [0, 0.6],
            "noise_fraction": [0, 0.03], "bias_strength_on_both": [0, 0.2],
            "bits": [8, 10, 12, 16], "gamma": [-0.4, 0.4], "gain": [0.85, 1.15],
            "orientation": "planes containing the thick axis, thick axis along rows"}


class PairSampler:
    """Random (condition stack, scaled residual) crops from a refreshed pool of degradations."""

    def __init__(
        self,
        volumes: list[np.ndarray],
        context_slices: int,
        residual_scale: float,
        crop: int = 96,
        factor_range: tuple[float, float] = (1.5, 5.0),
        seed: int = 0,
        refresh_every: int = 200,
        pool_size: int | None = None,
        slice_axis: int | None = None,
        remap_intensities: bool = True,
        pool: list[Entry] | None = None,
        zoom_range: tuple[float, float] = (1.0, 1.0),
        multi_axis_rate: float = 0.0,
        profiles: tuple[str, ...] = PROFILES,
        code_width: int = ACQUISITION_FEATURES,
    ) -> None:
        if not volumes:
            raise ValueError("PairSampler needs at least one volume")
        self.volumes = [np.ascontiguousarray(v, dtype=np.float32) for v in volumes]
        if any(v.ndim != 3 for v in self.volumes):
            raise ValueError("PairSampler volumes must be 3D")
        self.m = int(context_slices)
        self.scale = float(residual_scale)
        self.crop = int(crop)
        self.factor_range = (float(factor_range[0]), float(factor_range[1]))
        self.refresh_every = max(1, int(refresh_every)) if pool is None else 1 << 62
        """Samples between pool refreshes; a pool given ready-made (adaptation) is fixed."""
        self.slice_axis = slice_axis
        """Slice only along this axis (adaptation: the scan's thick axis, so that both in-plane
        directions of every crop are sharp, as at inference); None: any plane that contains
        the simulated thick axis."""
        self.remap_intensities = remap_intensities
        """Gamma and gain augmentation (off for adaptation: the scan's own intensities)."""
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        """Each pool entry's ground truth is first resampled by a zoom drawn from this range:
        new anatomy scales from the same few volumes ((1, 1): off)."""
        self.multi_axis_rate = float(multi_axis_rate)
        """Share of pool entries coarse along one or two more axes than the restored one, in
        the input and the target alike (the app restores an isotropic coarse scan one axis at
        a time: each pass sees the axes restored after it still coarse, and noise that
        interpolation smoothed in every coarse direction)."""
        unknown = sorted(set(profiles) - set(PROFILES))
        if not profiles or unknown:
            raise ValueError(f"profiles must be a non-empty subset of {PROFILES}, got "
                             f"{tuple(profiles)}")
        self.profiles = tuple(profiles)
        """Slice-profile shapes drawn (all of them by default; one shape trains a network
        that the app runs only for scans told that shape)."""
        self.code_width = int(code_width)
        """Entries of each crop's acquisition code: ``SCAN_FEATURES`` adds the noise level
        the app reads from the pass's input (the same estimator, on the simulated input) and
        the number of other axes still coarse."""
        self.rng = np.random.default_rng(seed)
        n_pool = pool_size or max(2, len(self.volumes))
        self._recipes: list[tuple[int, dict[str, Any]] | None] = [None] * (
            len(pool) if pool is not None else n_pool)
        """Per pool slot: the volume and the generator state it was degraded from, so that
        :meth:`load_state_dict` can rebuild the pool exactly without storing it."""
        self._readings: list[tuple[float | None, int]] = [(None, 0)] * len(self._recipes)
        """Per pool slot: the input's noise reading (None: not read) and its other coarse
        axes."""
        self.pool: list[Entry] = (
            list(pool) if pool is not None else
            [self._recorded_entry(k, k % len(self.volumes)) for k in range(n_pool)])
        if pool is not None and self.code_width == SCAN_FEATURES:
            self._readings = [(pass_noise_sigma(cubic, params.axis), 0)
                              for _, cubic, params in self.pool]
        self._since_refresh = 0
        self._next_slot = 0
        self.samples_drawn = 0

    # --- pool -----------------------------------------------------------------------------
    def random_degradation(self) -> tuple[Degradation, int]:
        """A draw from the family of real acquisitions (see docs/model-card.md)."""
        r = self.rng
        params = Degradation(
            axis=int(r.integers(0, 3)),
            factor=float(r.uniform(*self.factor_range)),
            profile=str(r.choice(self.profiles)),
            thickness_ratio=float(r.uniform(0.8, 1.3)),
            inplane_sigma_vox=float(r.uniform(0.0, 0.6)) if r.random() < 0.5 else 0.0,
            noise_fraction=float(r.uniform(0.0, 0.03)) if r.random() < 0.8 else 0.0,
            bias_strength=float(r.uniform(0.0, 0.2)) if r.random() < 0.5 else 0.0,
        )
        return params, int(r.choice([8, 10, 12, 16]))

    def _make_entry(self, vol_index: int) -> tuple[Entry, tuple[float | None, int]]:
        """(target, cubic estimate, degradation), the bias field on both sides; and the
        input's reading (noise, other coarse axes)."""
        params, bits = self.random_degradation()
        child = np.random.default_rng(int(self.rng.integers(2**63)))
        hr = self.volumes[vol_index]
        if self.zoom_range != (1.0, 1.0):
            hr = zoom_volume(hr, float(self.rng.uniform(*self.zoom_range)))
        if params.bias_strength > 0:
            hr = hr * smooth_bias_field(hr.shape, params.bias_strength, child)
        also: tuple[int, ...] = ()
        if self.multi_axis_rate and self.rng.random() < self.multi_axis_rate:
            others = [a for a in range(3) if a != params.axis]
            count = int(self.rng.integers(1, 3))
            also = tuple(int(a) for a in self.rng.permutation(others)[:count])
        cubic = simulate_cubic(hr, dataclasses.replace(params, bias_strength=0.0), child, bits,
                               also)
        noise = (pass_noise_sigma(cubic, params.axis, dict.fromkeys(also, params.factor))
                 if self.code_width == SCAN_FEATURES else None)
        return ((coarse_along(hr, params, also) if also else hr), cubic, params), (noise,
                                                                                  len(also))

    def _recorded_entry(self, slot: int, vol_index: int) -> Entry:
        self._recipes[slot] = (vol_index, self.rng.bit_generator.state)
        entry, self._readings[slot] = self._make_entry(vol_index)
        return entry

    def refresh(self) -> None:
        """Replace the oldest pool entry with a fresh degradation of a random volume."""
        slot = self._next_slot
        self.pool[slot] = self._recorded_entry(slot, int(self.rng.integers(len(self.volumes))))
        self._next_slot = (slot + 1) % len(self.pool)

    # --- exact resumption -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next crops, small enough for a training state file:
        the pool is stored as the recipes that made it, not as volumes."""
        if any(r is None for r in self._recipes):
            raise ValueError("a ready-made pool cannot be saved")
        return {"rng": self.rng.bit_generator.state, "since_refresh": self._since_refresh,
                "next_slot": self._next_slot, "samples_drawn": self.samples_drawn,
                "recipes": [[v, st] for v, st in self._recipes],  # type: ignore[misc]
                "volumes": len(self.volumes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the pool from its recipes and continue the draws where they stopped."""
        if state["volumes"] != len(self.volumes) or len(state["recipes"]) != len(self.pool):
            raise ValueError(f"the saved sampler had {state['volumes']} volumes and a pool of "
                             f"{len(state['recipes'])}; this one has {len(self.volumes)} and "
                             f"{len(self.pool)} (resume with the same training data)")
        for slot, (vol_index, rng_state) in enumerate(state["recipes"]):
            self.rng.bit_generator.state = rng_state
            self.pool[slot] = self._recorded_entry(slot, int(vol_index))
        self.rng.bit_generator.state = state["rng"]
        self._since_refresh = int(state["since_refresh"])
        self._next_slot = int(state["next_slot"])
        self.samples_drawn = int(state["samples_drawn"])

    # --- samples --------------------------------------------------------------------------
    def _one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.rng
        c, m = self.crop, self.m
        slot = int(r.integers(len(self.pool)))
        hr, cubic, params = self.pool[slot]
        in_plane = [a for a in range(3) if a != params.axis]
        if self.slice_axis is not None and self.slice_axis != params.axis:
            in_plane = [self.slice_axis]
        best = None
        for _attempt in range(20):
            axis = int(r.choice(in_plane))  # a plane that contains the thick axis, as the app
            hr_p = planar_view(hr, axis, params.axis)
            cu_p = planar_view(cubic, axis, params.axis)
            n, h, w = hr_p.shape
            s = int(r.integers(0, n))
            y = int(r.integers(0, max(h - c, 0) + 1))
            x = int(r.integers(0, max(w - c, 0) + 1))
            centre = hr_p[s, y : y + c, x : x + c]
            fg = float((centre > FOREGROUND_THRESHOLD).mean()) * centre.size / (c * c)
            if best is None or fg > best[0]:
                best = (fg, hr_p, cu_p, s, y, x)
            if fg >= MIN_FOREGROUND:
                break
        _, hr_p, cu_p, s, y, x = best
        idx = np.clip(np.arange(s - m, s + m + 1), 0, hr_p.shape[0] - 1)
        cond = cu_p[idx, y : y + c, x : x + c]
        target = hr_p[s, y : y + c, x : x + c]
        ph, pw = c - cond.shape[1], c - cond.shape[2]
        if ph or pw:  # volume smaller than the crop: pad with background
            cond = np.pad(cond, ((0, 0), (0, ph), (0, pw)))
            target = np.pad(target, ((0, ph), (0, pw)))
        cond = np.array(cond, dtype=np.float32)
        target = np.array(target, dtype=np.float32)
        # Augment: flips (in-plane and of the slice order), intensity scale and gamma (which
        # also remaps contrast between sites and sequences).
        if r.random() < 0.5:
            cond, target = cond[:, ::-1], target[::-1]
        if r.random() < 0.5:
            cond, target = cond[:, :, ::-1], target[:, ::-1]
        if r.random() < 0.5:
            cond = cond[::-1]
        gain = 1.0
        if self.remap_intensities:
            if r.random() < 0.5:
                gamma = float(np.exp(r.uniform(-0.4, 0.4)))
                cond = np.clip(cond, 0, None) ** gamma
                target = np.clip(target, 0, None) ** gamma
            gain = float(r.uniform(0.85, 1.15))
        cond = np.ascontiguousarray(cond * gain, dtype=np.float32)
        target = np.ascontiguousarray(target * gain, dtype=np.float32)
        x0 = (target - cond[m]) * self.scale
        known_profile = r.random() >= UNKNOWN_PROFILE_RATE
        known_width = r.random() >= UNKNOWN_WIDTH_RATE
        noise, coarse_others = self._readings[slot]
        code = acquisition_code(params.factor, params.profile if known_profile else UNKNOWN,
                                params.thickness_ratio if known_width else None,
                                noise=None if noise is None else noise * gain,
                                coarse_others=coarse_others, width=self.code_width)
        return cond, x0[None], np.asarray(code, dtype=np.float32)

    def sample_with_acquisition(self, batch_size: int,
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``cond [B, 2m+1, crop, crop]``, ``x0 [B, 1, crop, crop]`` and the acquisition code
        of each crop's simulated scan ``[B, code_width]`` (float32)."""
        conds, x0s, codes = [], [], []
        for _ in range(batch_size):
            if self._since_refresh >= self.refresh_every:
                self.refresh()
                self._since_refresh = 0
            cond, x0, code = self._one()
            conds.append(cond)
            x0s.append(x0)
            codes.append(code)
            self._since_refresh += 1
            self.samples_drawn += 1
        return (torch.from_numpy(np.stack(conds)), torch.from_numpy(np.stack(x0s)),
                torch.from_numpy(np.stack(codes)))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``cond [B, 2m+1, crop, crop]`` and ``x0 [B, 1, crop, crop]`` (float32)."""
        cond, x0, _ = self.sample_with_acquisition(batch_size)
        return cond, x0
