"""Architecture description shared by the teacher, the student and their checkpoints.

One flat, JSON-safe dataclass: a checkpoint's ``model.json`` stores ``to_dict()`` and the loader
rebuilds the exact network from it, so every architectural choice must live here (nothing implicit
in code defaults that could drift between the writer and the reader of a checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("teacher", "student")
PREDICTION_TYPES = ("v", "eps", "x0", "mean")
"""``v``/``eps``/``x0``: diffusion parametrisations. ``mean``: a direct regressor of the posterior
mean residual (one deterministic pass; the noisy-input channel is fed zeros). PSNR rewards the
mean, so this is the default output path; draws need a diffusion model."""
MEAN_TIMESTEP = 999
"""Timestep fed to ``mean`` models: the network's FiLM input is constant, as at t = T-1, where a
v-prediction model's one-step estimate is also the posterior mean."""
ACQUISITION_FEATURES = 3
"""Width of the acquisition code (:func:`acquisition_code`) that conditioned networks take:
what the header and sidecar tell (factor, slice-profile shape, slice width)."""
SCAN_FEATURES = ACQUISITION_FEATURES + 2
"""Width of the code of networks also told what the pass's input shows: its noise level and
how many other axes are still coarse (:func:`acquisition_code`). Measured reason: after three
passes over a 2 mm isotropic scan a network cannot tell noise from fine texture, and variants
trained on more noisy multi-axis inputs traded noise-free gains for noisy ones."""
CODE_WIDTHS = (0, ACQUISITION_FEATURES, SCAN_FEATURES)
NOISE_CODE_CENTRE = 0.015
"""Noise std (normalised units, :func:`bids_mrisr.sr.acquisition.noise_sigma`) coded as 0."""
NOISE_CODE_STEP = 0.01
"""Noise std per unit of the noise code."""
EXPERT_BIASES = ("none", "edge", "dilated")
"""Optional per-expert inductive biases: ``edge`` adds a fixed Laplacian of the centre condition
slice as an input channel; ``dilated`` gives the U-Net bottleneck dilated convolutions (wider,
non-local context at no extra cost)."""


@dataclass
class ModelConfig:
    """Hyper-parameters of one denoising network (teacher MoE or student U-Net)."""

    kind: str
    context_slices: int = 2
    """m: the condition stack holds 2m+1 neighbouring slices of the cubic-upsampled volume."""
    base_width: int = 16
    channel_mults: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 1
    time_dim: int = 64
    """Width of the sinusoidal timestep embedding and of the FiLM conditioning MLP."""
    dropout: float = 0.0
    acquisition_features: int = 0
    """0: the network is blind to the acquisition. ``ACQUISITION_FEATURES``: it also takes the
    thick-slice factor, the slice-profile shape and the slice width (:func:`acquisition_code`),
    which the app reads from the header and the scan, through the same FiLM path as the
    timestep. ``SCAN_FEATURES``: also the input's noise level and its other coarse axes. Measured
    reason for the told entries: one network for every profile blurs less sharply than a box
    profile needs (a box-only fine-tune gained +0.14 to +0.73 dB on held-out 3x box scans)."""
    stem: int = 2
    """Pixel-unshuffle factor at the U-Net input (FFDNet-style reversible downsampling): the
    network runs on (H/stem, W/stem) sub-images with stem^2 x the channels and pixel-shuffles its
    output back. On CPU, narrow full-resolution layers are memory-bound (norms and activations
    cost as much as the convs), so this buys ~2x speed at equal FLOPs, and a wider field of view."""
    # --- teacher only -------------------------------------------------------------------------
    num_experts: int = 3
    expert_names: tuple[str, ...] = ("edges", "texture", "global")
    expert_biases: tuple[str, ...] = ("edge", "none", "dilated")
    patch_sizes: tuple[int, ...] = (16, 8, 4)
    embed_dim: int = 64
    encoder_depth: int = 2
    num_heads: int = 4
    window_size: int = 4
    """Attention window side in coarsest-patch units (4 -> 64x64 px windows); 0 = global."""
    expert_shapes: tuple[tuple[int, tuple[int, ...], int], ...] = ()
    """Per expert ``(base_width, channel_mults, num_res_blocks)`` where the experts differ in
    architecture (empty: every expert has the config's own). A teacher upcycled from students of
    different shapes keeps each student's (:meth:`upcycled_teacher`). Why: students of one
    architecture trained with other seeds were too alike for routing to add anything
    (benchmarks/EXPERIMENTS.md, ``router-three-seed-experts``), while the mean of two
    architectures beat its members (``ensemble-two-independent-networks``)."""
    gate_temperature: float = 0.2
    router_top_k: int = 0
    """0: every token mixes all experts (dense softmax). k >= 1: each token keeps its k most
    probable experts, renormalised (sparse routing, as Switch and GShard route), so an expert
    is trained only where it is routed. Measured reason: with dense gates the seed's teacher
    ended near-uniform (entropy 1.085 against 1.099 for three equal gates) and its learned
    mixture equalled plain averaging: nothing made the experts differ."""
    # --- diffusion parametrisation ------------------------------------------------------------
    prediction_type: str = "v"
    schedule_steps: int = 1000
    """Noise schedule (cosine, Nichol & Dhariwal 2021), saved with the checkpoint so that the
    sampler and distillation rebuild exactly the schedule the network was trained on."""
    schedule_s: float = 0.008
    schedule_max_beta: float = 0.999
    residual_scale: float = 10.0
    """The model works on (HR - cubic) * residual_scale, so the diffusion target has ~unit
    variance."""

    def __post_init__(self) -> None:
        for name in ("channel_mults", "expert_names", "expert_biases", "patch_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        self.expert_shapes = tuple((int(w), tuple(int(m) for m in mults), int(blocks))
                                   for w, mults, blocks in self.expert_shapes)
        problems: list[str] = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.context_slices < 0:
            problems.append("context_slices must be >= 0")
        if self.base_width < 1 or not self.channel_mults or min(self.channel_mults) < 1:
            problems.append("base_width and channel_mults must be positive")
        if self.stem < 1:
            problems.append("stem must be >= 1")
        if self.num_res_blocks < 1:
            problems.append("num_res_blocks must be >= 1")
        if self.acquisition_features not in CODE_WIDTHS:
            problems.append(f"acquisition_features must be one of {CODE_WIDTHS}")
        if self.time_dim < 2 or self.time_dim % 2:
            problems.append("time_dim must be an even number >= 2")
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}")
        if self.kind == "teacher":
            if self.num_experts < 1:
                problems.append("num_experts must be >= 1")
            if len(self.expert_names) != self.num_experts:
                problems.append("expert_names must have num_experts entries")
            if len(self.expert_biases) != self.num_experts:
                problems.append("expert_biases must have num_experts entries")
            if any(b not in EXPERT_BIASES for b in self.expert_biases):
                problems.append(f"expert_biases must be among {EXPERT_BIASES}")
            ps = self.patch_sizes
            if not ps or any(a <= b or a % b for a, b in zip(ps, ps[1:], strict=False)):
                problems.append("patch_sizes must decrease strictly, each dividing the previous")
            if self.embed_dim % self.num_heads:
                problems.append("embed_dim must be divisible by num_heads")
            if self.window_size < 0 or self.encoder_depth < 0:
                problems.append("window_size and encoder_depth must be >= 0")
            if self.gate_temperature <= 0:
                problems.append("gate_temperature must be > 0")
            if self.expert_shapes and len(self.expert_shapes) != self.num_experts:
                problems.append("expert_shapes must be empty or have num_experts entries")
            if any(w < 1 or not mults or min(mults) < 1 or blocks < 1
                   for w, mults, blocks in self.expert_shapes):
                problems.append("expert_shapes: widths, channel_mults and blocks must be "
                                "positive")
            if not 0 <= self.router_top_k <= self.num_experts:
                problems.append("router_top_k must be between 0 and num_experts")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def code_width(self) -> int:
        """Entries of the acquisition codes its training crops carry (a blind network's
        crops carry the told ones, which it ignores)."""
        return self.acquisition_features or ACQUISITION_FEATURES

    def noise_schedule(self) -> Any:
        """The :class:`~bids_mrisr.sr.diffusion.schedule.NoiseSchedule` of this network."""
        from bids_mrisr.sr.diffusion.schedule import NoiseSchedule

        return NoiseSchedule(self.schedule_steps, self.schedule_s, self.schedule_max_beta)

    @property
    def in_condition_channels(self) -> int:
        """Channels of the condition stack: the centre slice and m neighbours on each side."""
        return 2 * self.context_slices + 1

    def expert_shape(self, k: int) -> tuple[int, tuple[int, ...], int]:
        """Expert ``k``'s ``(base_width, channel_mults, num_res_blocks)``."""
        if self.expert_shapes:
            return self.expert_shapes[k]
        return self.base_width, self.channel_mults, self.num_res_blocks

    @property
    def unet_shapes(self) -> list[tuple[int, tuple[int, ...], int]]:
        """The shape of every U-Net the network runs (one for a student, one per expert)."""
        if self.kind != "teacher":
            return [(self.base_width, self.channel_mults, self.num_res_blocks)]
        return [self.expert_shape(k) for k in range(self.num_experts)]

    @property
    def tile_alignment(self) -> int:
        """Tile origins on multiples of this see the same internal grids (U-Net pooling, router
        patches and attention windows), so overlapping tiles agree; tile sizes that are
        multiples of it need no internal padding."""
        unet = self.stem * 2 ** (max(len(mults) for _, mults, _ in self.unet_shapes) - 1)
        if self.kind != "teacher":
            return unet
        return math.lcm(unet, self.patch_sizes[0] * max(self.window_size, 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        if self.expert_shapes:
            out["expert_shapes"] = [[w, list(mults), blocks] for w, mults, blocks in
                                    self.expert_shapes]
        else:  # one architecture: model.json stays as it was before experts could differ
            del out["expert_shapes"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they mean a newer format)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        if "kind" not in d:
            raise ValueError("ModelConfig needs a 'kind'")
        return cls(**d)

    # --- presets ----------------------------------------------------------------------------
    @classmethod
    def teacher_default(cls) -> ModelConfig:
        """Shipped teacher: 3 experts, each a 4-level U-Net (widths 16/16/32/64 after a 2x stem).

        Measured on 2 CPU cores: ~43 kFLOP and ~57 ms per 256x256 slice per step for all three
        experts, i.e. ~15 min for 20 DDIM steps x 3 planes of a 256^3 volume before sparse
        skipping; deep, cheap low-resolution levels hold most of the parameters.
        """
        return cls(kind="teacher", base_width=16, channel_mults=(1, 1, 2, 4), num_res_blocks=1)

    @classmethod
    def upcycled_teacher(cls, student: ModelConfig, num_experts: int = 3,
                         router_top_k: int = 2, others: Sequence[ModelConfig] = ()
                         ) -> ModelConfig:
        """A mean teacher whose experts have ``student``'s architecture, so that each can start
        as a copy of a trained student (sparse upcycling, Komatsuzaki et al. 2022): the mixture
        then starts exactly at the student and the routed experts can only specialise from
        there. The first expert also sees the Laplacian of the centre slice (zero weights at
        the start); the others are plain.

        ``others``: more students, expert k taking the shape of ``[student, *others][k % n]``.
        They may differ from ``student`` in width, levels and blocks per level (each expert
        then keeps its student's, in ``expert_shapes``), in nothing else (ValueError)."""
        students = [student, *others]
        for other in others:
            if dataclasses.replace(other, base_width=student.base_width,
                                   channel_mults=student.channel_mults,
                                   num_res_blocks=student.num_res_blocks) != student:
                raise ValueError("the experts' students may differ in base_width, "
                                 "channel_mults and num_res_blocks only")
        shapes = tuple(students[k % len(students)].unet_shapes[0] for k in range(num_experts))
        return cls(kind="teacher", context_slices=student.context_slices,
                   base_width=student.base_width, channel_mults=student.channel_mults,
                   num_res_blocks=student.num_res_blocks, time_dim=student.time_dim,
                   dropout=student.dropout, acquisition_features=student.acquisition_features,
                   stem=student.stem, num_experts=num_experts,
                   expert_names=("edges",) + tuple(f"plain{k}" for k in range(1, num_experts)),
                   expert_biases=("edge",) + ("none",) * (num_experts - 1),
                   router_top_k=router_top_k, prediction_type="mean",
                   residual_scale=student.residual_scale,
                   expert_shapes=() if len(set(shapes)) == 1 else shapes)

    @classmethod
    def student_default(cls) -> ModelConfig:
        """Shipped student: one 3-level U-Net (32/32/64, 0.45 M parameters, ~46 kFLOP per
        pixel), the largest of the size curve that keeps a 2 mm -> 1 mm whole head under 90 s
        on 2 CPU cores (benchmarks/EXPERIMENTS.md, ``size-curve-equal-compute``)."""
        return cls(kind="student", base_width=32, channel_mults=(1, 1, 2), num_res_blocks=1,
                   time_dim=32)

    @classmethod
    def tiny_teacher(cls) -> ModelConfig:
        """For tests: same topology as the default, minimal widths."""
        return cls(kind="teacher", base_width=4, channel_mults=(1, 2), num_res_blocks=1,
                   time_dim=8, embed_dim=16, encoder_depth=1, num_heads=2, window_size=2)

    @classmethod
    def tiny_student(cls) -> ModelConfig:
        """For tests."""
        return cls(kind="student", base_width=4, channel_mults=(1, 2), num_res_blocks=1,
                   time_dim=8)


def acquisition_code(factor: float, profile: str = "unknown",
                     thickness_ratio: float | None = None, *, noise: float | None = None,
                     coarse_others: int = 0, width: int = ACQUISITION_FEATURES) -> list[float]:
    """The acquisition input of conditioned networks, each entry centred on the typical scan.

    ``[(factor - 3) / 2, profile, (thickness_ratio - 1) / 0.3]`` with profile +1 for a box,
    -1 for a Gaussian and 0 when unknown; an unknown slice width is 0 (contiguous slices).
    Training draws unknown entries too, so 0 means "average over what the family holds".
    A code of ``SCAN_FEATURES`` entries adds what the pass's input shows:
    ``(noise - NOISE_CODE_CENTRE) / NOISE_CODE_STEP`` (clipped to [-2, 4]; None: 0) and the
    number of other axes still coarse (0, 1 or 2).
    """
    from bids_mrisr.sr.options import PROFILES, UNKNOWN

    if profile != UNKNOWN and profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} or {UNKNOWN!r}, got {profile!r}")
    if width not in CODE_WIDTHS[1:]:
        raise ValueError(f"an acquisition code has {CODE_WIDTHS[1]} or {CODE_WIDTHS[2]} "
                         f"entries, not {width}")
    shape = 0.0 if profile == UNKNOWN else (1.0 if profile == "box" else -1.0)
    slice_width = 0.0 if thickness_ratio is None else (float(thickness_ratio) - 1.0) / 0.3
    told = [(float(factor) - 3.0) / 2.0, shape, slice_width]
    if width == ACQUISITION_FEATURES:
        return told
    level = 0.0 if noise is None else (float(noise) - NOISE_CODE_CENTRE) / NOISE_CODE_STEP
    return [*told, min(max(level, -2.0), 4.0), float(coarse_others)]
