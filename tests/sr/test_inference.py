"""The 2.5D inference engine: shapes, gates, uncertainty, determinism, tiling, fusion, errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from bids_mrisr.memory import untileable_bytes
from bids_mrisr.sr import slicing
from bids_mrisr.sr.device import resolve_device
from bids_mrisr.sr.diffusion.schedule import alpha_bar, predict_eps_from_x0, v_from_x0_eps
from bids_mrisr.sr.engine import SRError, SROptions, super_resolve
from bids_mrisr.sr.inference import run_loaded, run_model
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.planning import plan_memory


def _phantom(shape: Sequence[int] = (20, 24, 18), seed: int = 0) -> np.ndarray:
    """A smooth head-like blob with some texture, values in about [0, 1]."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    rng = np.random.default_rng(seed)
    vol = 0.8 * np.exp(-2 * r2) + 0.1 * np.sin(7 * grids[0]) * np.cos(5 * grids[1])
    return (vol + 0.02 * rng.standard_normal(shape)).astype(np.float32)


def _cfg(kind: str, m: int = 1, k: int = 3) -> ModelConfig:
    return ModelConfig(
        kind=kind,
        context_slices=m,
        num_experts=k,
        expert_names=tuple(f"e{i}" for i in range(k)),
        expert_biases=("none",) * k,
        residual_scale=10.0,
        base_width=4,
        channel_mults=(1,),
        num_res_blocks=1,
        stem=1,
        patch_sizes=(8,),
        embed_dim=8,
        window_size=0,
        num_heads=1,
    )


class LocalStandIn(nn.Module):
    """Follows the networks call contract with purely local convolutions (receptive field 5 px),
    so tiled and untiled inference must agree up to float rounding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        c, k = cfg.in_condition_channels, max(cfg.num_experts, 1)
        self.teacher = cfg.kind == "teacher"
        self.router = nn.Conv2d(c, k, 3, padding=1)
        self.c1 = nn.Conv2d(c + 1, 6 * k, 3, padding=1)
        self.c2 = nn.Conv2d(6 * k, k, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.4

    def route(self, cond: torch.Tensor) -> torch.Tensor | None:
        return torch.softmax(2 * self.router(cond), dim=1) if self.teacher else None

    def forward(self, x_t, cond, t, gates=None, active_experts=None, return_features=False):
        h = torch.tanh(self.c1(torch.cat([x_t, cond], 1)))
        preds = self.c2(h) * (1 + t.view(-1, 1, 1, 1) / 1000)
        if not self.teacher:
            return preds[:, :1]
        idx = list(range(preds.shape[1])) if active_experts is None else list(active_experts)
        gw = gates[:, idx]
        gw = gw / gw.sum(1, keepdim=True)
        return (gw * preds[:, idx]).sum(1, keepdim=True)


class OffsetStandIn(nn.Module):
    """A perfect-but-wrong denoiser: its clean residual is a constant per-slice offset that
    depends pseudo-randomly on the slice content, the textbook cause of slice striping."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.m = m
        self.dummy = nn.Parameter(torch.zeros(1))

    def route(self, cond: torch.Tensor) -> None:
        return None

    def forward(self, x_t, cond, t, gates=None, active_experts=None, return_features=False):
        offset = torch.sin(cond[:, self.m].double().sum(dim=(1, 2)) * 997.0) * 0.5
        x0 = offset.view(-1, 1, 1, 1).expand_as(x_t)
        x_t, ab = x_t.double(), alpha_bar(t)
        return v_from_x0_eps(x0, predict_eps_from_x0(x_t, x0, ab), ab).float()


@pytest.fixture(scope="module")
def tiny_models():
    net = pytest.importorskip("bids_mrisr.sr.networks.factory")
    from bids_mrisr.sr.networks.config import ModelConfig

    torch.manual_seed(0)
    out = {}
    for cfg in (ModelConfig.tiny_teacher(), ModelConfig.tiny_student()):
        out[cfg.kind] = (net.build_model(cfg).eval(), cfg)
    return out


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_tiny_networks_end_to_end(tiny_models, kind: str) -> None:
    model, cfg = tiny_models[kind]
    vol = _phantom()
    seen: list[tuple[int, int]] = []
    opts = SROptions(method=kind, steps=2, seed=3)
    res = run_loaded(vol, model, cfg, opts, progress=lambda d, t: seen.append((d, t)))
    assert res.image.shape == vol.shape and res.image.dtype == np.float32
    assert np.isfinite(res.image).all()
    assert res.uncertainty is None
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert res.info["SamplingSteps"] == 2 and res.info["Planes"] == list(opts.planes)
    assert res.info["Model"] == kind and res.info["Precision"] == "fp32"
    if kind == "teacher":
        assert res.gates is not None and res.gates.dtype == np.float32
        assert res.gates.shape == (cfg.num_experts, *vol.shape)
        np.testing.assert_allclose(res.gates.sum(0), 1.0, atol=1e-5)
        assert res.gates.min() >= 0
        assert res.expert_names == list(cfg.expert_names)
    else:
        assert res.gates is None and res.expert_names == []
    again = run_loaded(vol, model, cfg, opts)
    assert np.array_equal(res.image, again.image)  # bit-identical under the same seed
    other = run_loaded(vol, model, cfg, SROptions(method=kind, steps=2, seed=4))
    assert not np.array_equal(res.image, other.image)


def test_uncertainty_only_with_several_draws(tiny_models) -> None:
    model, cfg = tiny_models["student"]
    vol = _phantom()
    res = run_loaded(vol, model, cfg, SROptions(method="student", steps=2, num_samples=3))
    assert res.uncertainty is not None and res.uncertainty.shape == vol.shape
    assert (res.uncertainty >= 0).all() and res.uncertainty.max() > 0
    assert res.info["NumSamples"] == 3 and res.info["Eta"] == 1.0
    res2 = run_loaded(vol, model, cfg, SROptions(method="student", steps=2, num_samples=3, eta=0.3))
    assert res2.info["Eta"] == 0.3
    np.testing.assert_array_equal(
        res.image,
        run_loaded(vol, model, cfg, SROptions(method="student", steps=2, num_samples=3)).image,
    )


def test_batching_does_not_change_the_noise() -> None:
    cfg = _cfg("teacher")
    model = LocalStandIn(cfg)
    vol = _phantom()
    a = run_loaded(vol, model, cfg, SROptions(method="teacher", steps=3, eta=0.5, batch_size=1))
    b = run_loaded(vol, model, cfg, SROptions(method="teacher", steps=3, eta=0.5))
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)


def test_tiling_is_exact_for_local_networks() -> None:
    """The tiling machinery itself (halo, blending, gates) adds no error."""
    cfg = _cfg("teacher")
    model = LocalStandIn(cfg)
    vol = _phantom((70, 66, 3))
    opts = SROptions(method="teacher", steps=2, planes=("axial",))
    whole = run_loaded(vol, model, cfg, opts)
    tiled = run_loaded(vol, model, cfg, opts, tile=32)
    assert tiled.info["TileSize"]["axial"] == 32 and whole.info["TileSize"]["axial"] is None
    np.testing.assert_allclose(tiled.image, whole.image, atol=1e-5)
    np.testing.assert_allclose(tiled.gates, whole.gates, atol=1e-5)


def test_tiling_approximates_untiled_for_real_networks(tiny_models) -> None:
    """GroupNorm statistics and the router's attention are tile-dependent, so only close."""
    vol = _phantom((70, 66, 3))
    for kind in ("teacher", "student"):
        model, cfg = tiny_models[kind]
        opts = SROptions(method=kind, steps=1, planes=("axial",))
        whole = run_loaded(vol, model, cfg, opts)
        tiled = run_loaded(vol, model, cfg, opts, tile=32)
        resid = np.abs(whole.image - vol).mean()
        diff = np.abs(tiled.image - whole.image)
        assert diff.mean() < 0.2 * resid, (kind, diff.mean(), resid)


def test_memory_budget_drives_tiling() -> None:
    from bids_mrisr.sr.planning import activation_bytes_per_pixel

    cfg = _cfg("teacher")
    bpp = activation_bytes_per_pixel(cfg)
    shape = (256, 256, 256)
    cpu = torch.device("cpu")
    fixed = untileable_bytes(256**3, cfg.num_experts)  # whole volumes (and gates) never tile
    roomy = plan_memory(cfg, shape, shape, SROptions(max_memory_gb=16.0), cpu, 0)
    assert roomy.tile is None and roomy.batch_size > 1
    budget = (fixed + bpp * 80 * 80) / 1e9
    tight = plan_memory(cfg, shape, shape, SROptions(max_memory_gb=budget), cpu, 0)
    assert tight.batch_size == 1 and tight.tile is not None
    assert (tight.tile + 2 * tight.halo) ** 2 * bpp <= budget * 1e9 - fixed
    with pytest.raises(SRError, match="too small"):
        plan_memory(cfg, shape, shape, SROptions(max_memory_gb=0.1), cpu, 0)


def test_budgeted_run_tiles_and_stays_close() -> None:
    cfg = _cfg("student")
    model = LocalStandIn(cfg)
    vol = _phantom((90, 90, 3))
    from bids_mrisr.sr.planning import activation_bytes_per_pixel

    bpp = activation_bytes_per_pixel(cfg)
    fixed = untileable_bytes(vol.size) + sum(p.numel() * 4 for p in model.parameters())
    opts = SROptions(
        method="student",
        steps=2,
        planes=("axial",),
        max_memory_gb=(fixed + bpp * 64 * 64 * 1.2) / 1e9,
    )
    res = run_loaded(vol, model, cfg, opts)
    assert res.info["TileSize"]["axial"] is not None and res.info["BatchSize"]["axial"] == 1
    whole = run_loaded(vol, model, cfg, SROptions(method="student", steps=2, planes=("axial",)))
    np.testing.assert_allclose(res.image, whole.image, atol=1e-5)


def test_expert_skipping(tiny_models) -> None:
    model, cfg = tiny_models["teacher"]
    vol = _phantom()
    base = run_loaded(
        vol, model, cfg, SROptions(method="teacher", steps=2, gate_skip_threshold=0.0)
    )
    assert base.info["SkippedExpertEvaluations"] == 0
    sparse = run_loaded(
        vol, model, cfg, SROptions(method="teacher", steps=2, gate_skip_threshold=0.999)
    )
    assert sparse.info["SkippedExpertEvaluations"] > 0
    total = base.info["ExpertEvaluations"]
    assert sparse.info["ExpertEvaluations"] + sparse.info["SkippedExpertEvaluations"] == total
    np.testing.assert_allclose(sparse.gates.sum(0), 1.0, atol=1e-5)
    assert np.isfinite(sparse.image).all()


def _z_gradient_energy(x: np.ndarray) -> float:
    return float(np.mean(np.diff(x.astype(np.float64), axis=2) ** 2))


def test_plane_fusion_removes_slice_striping() -> None:
    m = 1
    cfg = _cfg("student", m=m)
    model = OffsetStandIn(m)
    vol = _phantom((24, 26, 22))
    single = run_loaded(vol, model, cfg, SROptions(method="student", steps=2, planes=("axial",)))
    fused = run_loaded(vol, model, cfg, SROptions(method="student", steps=2))
    e_single = _z_gradient_energy(single.image - vol)
    e_fused = _z_gradient_energy(fused.image - vol)
    assert e_single > 1e-4  # the stand-in really stripes along the axial slicing axis
    # Axial stripes are averaged with planes that are constant along z: ~1/9 of the energy.
    assert e_fused < 0.25 * e_single, (e_fused, e_single)
    assert single.info["PlaneFusion"] == "none" and fused.info["PlaneFusion"] == "mean"


def test_condition_stack_replicates_edges() -> None:
    planar = torch.arange(5, dtype=torch.float32).view(5, 1, 1).expand(5, 2, 2)
    stack = slicing.condition_stack(planar, range(0, 5), 2)
    assert stack.shape == (5, 5, 2, 2)
    assert stack[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert stack[4, :, 0, 0].tolist() == [2, 3, 4, 4, 4]


def test_tiles_cover_and_blend_to_one() -> None:
    tiles = slicing.plan_tiles(100, 70, 32, 16, halo=16, align=16)
    assert tiles is not None
    acc = torch.zeros(100, 70)
    for t in tiles:
        acc[t.core] += t.weight
        assert t.window[0].start % 16 == 0 and t.window[1].start % 16 == 0
    assert acc.min() > 0.99 and acc.max() < 1.01
    assert slicing.plan_tiles(30, 30, 32, 16) is None


def test_errors() -> None:
    vol = _phantom()
    with pytest.raises(SRError, match="no trained weights are available for the teacher"):
        run_model(vol, SROptions(method="teacher"))
    with pytest.raises(SRError, match="--weights"):
        super_resolve(vol, SROptions(method="student"))
    cfg = _cfg("student")
    with pytest.raises(SRError, match="planes"):
        run_loaded(vol, LocalStandIn(cfg), cfg, SROptions(planes=("oblique",)))
    if not torch.cuda.is_available():
        with pytest.raises(SRError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SRError):
        resolve_device("tpu")


def test_run_model_with_checkpoints(tmp_path) -> None:
    ck = pytest.importorskip("bids_mrisr.sr.checkpoint")
    from bids_mrisr.sr.networks.config import ModelConfig

    vol = _phantom()
    for cfg in (ModelConfig.tiny_teacher(), ModelConfig.tiny_student()):
        d = tmp_path / cfg.kind
        sha = ck.random_checkpoint(d, cfg, seed=0)
        res = run_model(vol, SROptions(method=cfg.kind, weights=d, steps=2, device="cpu"))
        assert res.info["WeightsSHA256"] == sha and res.image.shape == vol.shape
        other = "student" if cfg.kind == "teacher" else "teacher"
        with pytest.raises(SRError, match=f"holds a {cfg.kind} model"):
            run_model(vol, SROptions(method=other, weights=d, steps=2))
    with pytest.raises(SRError):
        run_model(vol, SROptions(method="student", weights=tmp_path / "missing"))


def test_default_output_is_the_mean_estimate_and_draws_are_reported_apart() -> None:
    """No --steps, one sample: one v-prediction step from t = T-1 (a trained model's estimate of
    the posterior mean). Draws only when asked for, labelled as such."""
    vol = _phantom()
    model = LocalStandIn(_cfg("student"))
    mean = run_loaded(vol, model, _cfg("student"), SROptions(seed=1), default_steps=3)
    again = run_loaded(vol, model, _cfg("student"), SROptions(seed=1), default_steps=3)
    assert mean.info["SamplingSteps"] == 1 and mean.info["Estimate"].startswith("posterior mean")
    np.testing.assert_array_equal(mean.image, again.image)
    draw = run_loaded(vol, model, _cfg("student"), SROptions(steps=4))
    assert draw.info["Estimate"] == "single draw" and draw.info["SamplingSteps"] == 4
    several = run_loaded(vol, model, _cfg("student"), SROptions(num_samples=2),
                         default_steps=3)
    assert several.info["Estimate"] == "mean of 2 draws" and several.info["SamplingSteps"] == 3
    assert several.uncertainty is not None


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_flip_views_average_the_flipped_restorations(kind: str) -> None:
    """N views = the mean of restoring each flipped copy and flipping it back (gates too)."""
    cfg = _cfg(kind)
    model = LocalStandIn(cfg)
    vol = _phantom()
    one = SROptions(method=kind, blurred_axes=(2,), flip_views=1)
    images, gates = [], []
    for flips in ((), (0, 1, 2), (0,), (1, 2)):
        view = np.ascontiguousarray(np.flip(vol, flips)) if flips else vol
        res = run_loaded(view, model, cfg, one)
        images.append(np.flip(res.image, flips))
        gates.append(None if res.gates is None else np.flip(res.gates, [a + 1 for a in flips]))
    assert not np.allclose(images[0], images[1], atol=1e-3)  # the stand-in is not symmetric
    for count in (2, 4):
        res = run_loaded(vol, model, cfg, dataclasses.replace(one, flip_views=count))
        np.testing.assert_allclose(res.image, np.mean(images[:count], axis=0), atol=1e-5)
        assert len(res.info["FlipViews"]) == count
        if kind == "teacher":
            np.testing.assert_allclose(res.gates, np.mean(gates[:count], axis=0), atol=1e-5)


def test_flip_views_default_to_two_for_one_thick_axis_and_a_mean_estimate_only() -> None:
    cfg = _cfg("student")
    model = LocalStandIn(cfg)
    vol = _phantom()
    one_axis = SROptions(blurred_axes=(1,), axis_factors=(1, 3, 1))
    thick = run_loaded(vol, model, cfg, one_axis)
    assert thick.info["FlipViews"] == [[], [0, 1, 2]]
    draws = run_loaded(vol, model, cfg, dataclasses.replace(one_axis, steps=2))
    assert draws.info["FlipViews"] == [[]]  # auto does not double multi-step sampling
    asked = run_loaded(vol, model, cfg, dataclasses.replace(one_axis, steps=2, flip_views=2))
    assert len(asked.info["FlipViews"]) == 2
    for blurred in (None, (0, 1, 2)):
        res = run_loaded(vol, model, cfg, SROptions(blurred_axes=blurred))
        assert res.info["FlipViews"] == [[]]
    with pytest.raises(SRError, match="flip views must be one of 1, 2, 4, 8, got 3"):
        run_loaded(vol, model, cfg, SROptions(flip_views=3))


def test_inputs_coarse_along_several_axes_use_the_checkpoints_multi_axis_variant(tmp_path):
    ck = pytest.importorskip("bids_mrisr.sr.checkpoint")
    from bids_mrisr.sr.networks.config import ModelConfig
    from bids_mrisr.sr.variants import MULTI_AXIS_WEIGHTS

    vol = _phantom()
    cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    main_sha = ck.random_checkpoint(tmp_path / "student", cfg, seed=0)
    single = SROptions(method="student", weights=tmp_path / "student", blurred_axes=(2,),
                       axis_factors=(1, 1, 2), flip_views=1, device="cpu")
    iso = dataclasses.replace(single, blurred_axes=(0, 1, 2), axis_factors=(2, 2, 2))
    # without a variant, every geometry uses the checkpoint itself
    assert run_model(vol, iso).info["WeightsSHA256"] == main_sha
    variant_sha = ck.random_checkpoint(tmp_path / "student" / MULTI_AXIS_WEIGHTS, cfg, seed=1)
    one = run_model(vol, single)
    assert one.info["WeightsSHA256"] == main_sha and "WeightsVariant" not in one.info
    several = run_model(vol, iso)
    assert several.info["WeightsSHA256"] == variant_sha != main_sha
    assert several.info["WeightsVariant"].startswith(MULTI_AXIS_WEIGHTS)
    assert several.info["ModelName"] == f"student/{MULTI_AXIS_WEIGHTS}"


def test_a_scan_told_box_slices_uses_the_checkpoints_box_variant(tmp_path):
    ck = pytest.importorskip("bids_mrisr.sr.checkpoint")
    from bids_mrisr.sr.networks.config import ModelConfig
    from bids_mrisr.sr.variants import BOX_WEIGHTS, MULTI_AXIS_WEIGHTS

    vol = _phantom()
    cfg = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    main_sha = ck.random_checkpoint(tmp_path / "student", cfg, seed=0)
    box = SROptions(method="student", weights=tmp_path / "student", blurred_axes=(2,),
                    axis_factors=(1, 1, 3), flip_views=1, device="cpu", slice_profile="box",
                    input_consistency=False)
    # without a variant, a box scan uses the checkpoint itself
    assert run_model(vol, box).info["WeightsSHA256"] == main_sha
    box_sha = ck.random_checkpoint(tmp_path / "student" / BOX_WEIGHTS, cfg, seed=1)
    told = run_model(vol, box)
    assert told.info["WeightsSHA256"] == box_sha != main_sha
    assert told.info["ModelName"] == f"student/{BOX_WEIGHTS}"
    assert told.info["WeightsVariant"].startswith(f"{BOX_WEIGHTS}: ")
    for profile in ("gaussian", None):  # another shape, or none told: the main weights
        other = run_model(vol, dataclasses.replace(box, slice_profile=profile))
        assert other.info["WeightsSHA256"] == main_sha and "WeightsVariant" not in other.info
    # several coarse axes: the multi-axis variant where there is one, never the box one
    iso = dataclasses.replace(box, blurred_axes=(0, 1, 2), axis_factors=(2, 2, 2))
    assert run_model(vol, iso).info["WeightsSHA256"] == main_sha
    multi_sha = ck.random_checkpoint(tmp_path / "student" / MULTI_AXIS_WEIGHTS, cfg, seed=2)
    assert run_model(vol, iso).info["WeightsSHA256"] == multi_sha
    assert run_model(vol, box).info["WeightsSHA256"] == box_sha
