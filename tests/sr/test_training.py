"""Training code: pair sampling, losses, distillation targets, loops, evaluation (tiny, CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bids_mrisr.sr.checkpoint import load_checkpoint
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.diffusion.sampler import ddim_step
from bids_mrisr.sr.diffusion.schedule import (
    NoiseSchedule,
    predict_eps_from_x0,
    q_sample,
    v_from_x0_eps,
)
from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.pairs import (
    PairSampler,
    coarse_along,
    degradation_family,
    simulate_cubic,
    zoom_volume,
)
from bids_mrisr.sr.slicing import planar_view
from bids_mrisr.sr.training.distill import (
    DistillRecipe,
    distill_student,
    grid_for,
    two_steps,
    v_for_jump,
)
from bids_mrisr.sr.training.evaluate import evaluate_volume
from bids_mrisr.sr.training.loop import DiffusionRecipe, train_teacher
from bids_mrisr.sr.training.losses import diffusion_batch, teacher_loss


def head(shape=(40, 44, 36), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.8, 0.85, 0.9), strict=True)))
    data = np.where(r < 1.0, 0.6, 0.0) + np.where(r < 0.8, 0.3, 0.0)
    for _ in range(4):
        c = rng.uniform(-0.4, 0.4, 3)
        blob = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)))
        data += np.where(blob < 0.15, 0.25, 0.0)
    return data.astype(np.float32)


def test_pair_sampler_shapes_residual_foreground_determinism():
    vols = [head(), head(seed=1)]
    s = PairSampler(vols, context_slices=2, residual_scale=10.0, crop=24, seed=3,
                    refresh_every=5)
    cond, x0 = s.sample(6)
    assert cond.shape == (6, 5, 24, 24) and x0.shape == (6, 1, 24, 24)
    assert cond.dtype == torch.float32 and x0.dtype == torch.float32
    assert torch.isfinite(cond).all() and torch.isfinite(x0).all()
    hr_centre = cond[:, 2] + x0[:, 0] / 10.0
    fg = (hr_centre > 0.05).float().mean(dim=(1, 2))
    assert (fg >= 0.1).all()
    assert hr_centre.max() < 1.6 and x0.abs().mean() > 0  # a real, bounded residual
    cond2, x02 = PairSampler(vols, 2, 10.0, crop=24, seed=3, refresh_every=5).sample(6)
    assert torch.equal(cond, cond2) and torch.equal(x0, x02)
    for _ in range(3):
        s.sample(4)  # crosses refreshes
    assert s.samples_drawn == 18


def test_zoom_augmentation_shrinks_the_anatomy_about_the_volume_centre():
    vol = head()
    small = zoom_volume(vol, 0.75)
    assert small.shape == (30, 33, 27) and small.min() >= 0
    assert zoom_volume(vol, 1.0) is vol  # off: the volume itself
    # Edge-aligned geometry: the head's centre of mass keeps its place relative to the grid,
    # and its extent shrinks by the zoom.
    for a in range(3):
        other = tuple(b for b in range(3) if b != a)
        before, after = vol.sum(axis=other), small.sum(axis=other)
        com = [(np.arange(len(p)) + 0.5) @ p / p.sum() / len(p) for p in (before, after)]
        assert abs(com[0] - com[1]) < 0.01
        width = [(p > 0.05 * p.max()).sum() for p in (before, after)]
        assert abs(width[1] / width[0] - 0.75) < 0.06
    sampler = PairSampler([vol], 2, 10.0, crop=16, seed=0, zoom_range=(0.75, 0.75))
    for hr, cubic, _ in sampler.pool:  # each entry degrades the zoomed truth
        assert hr.shape == cubic.shape == small.shape
    plain = PairSampler([vol], 2, 10.0, crop=16, seed=0)
    assert all(hr.shape == vol.shape for hr, _, _ in plain.pool)


def test_multi_axis_pairs_match_the_apps_one_axis_at_a_time_restoration():
    """An isotropic coarse scan, restored first along one axis: its input is coarse along all
    axes (noise once, on the low-resolution voxels) and its target only along the others."""
    vol = head()
    params = Degradation(axis=1, factor=2.0, profile="box")
    cubic = simulate_cubic(vol, params, np.random.default_rng(0), None, also=(0, 2))
    target = coarse_along(vol, params, (0, 2))
    # separable: coarse along (0, 2) then along 1 is the same acquisition, to float rounding
    np.testing.assert_allclose(cubic, coarse_along(target, params, (1,)), atol=1e-5)
    assert np.abs(target - vol).mean() > 0.01 and np.abs(cubic - target).mean() > 0.005
    noisy = simulate_cubic(vol, dataclasses.replace(params, noise_fraction=0.03),
                           np.random.default_rng(0), None, also=(0, 2))
    noise = noisy - cubic  # interpolated from the coarse voxels: smooth along every coarse axis
    for axis in range(3):
        lag = np.corrcoef(noise.take(range(0, 30), axis).ravel(),
                          noise.take(range(1, 31), axis).ravel())[0, 1]
        assert lag > 0.5, (axis, lag)
    sampler = PairSampler([vol], 2, 10.0, crop=16, seed=0, multi_axis_rate=1.0)
    for hr, _, _ in sampler.pool:
        assert hr.shape == vol.shape and np.abs(hr - vol).mean() > 0.005  # coarse target


def test_pair_sampler_draws_only_the_profiles_it_is_given():
    vol = head()
    boxes = PairSampler([vol], 1, 5.0, crop=16, seed=0, pool_size=12, profiles=("box",))
    assert {params.profile for _, _, params in boxes.pool} == {"box"}
    for _ in range(5):
        boxes.refresh()
    assert {params.profile for _, _, params in boxes.pool} == {"box"}
    both = PairSampler([vol], 1, 5.0, crop=16, seed=0, pool_size=12)
    assert {params.profile for _, _, params in both.pool} == {"box", "gaussian"}
    assert degradation_family((1.5, 5.0), profiles=("box",))["profiles"] == ["box"]
    for bad in ((), ("box", "lorentzian")):
        with pytest.raises(ValueError, match="profiles must be a non-empty subset"):
            PairSampler([vol], 1, 5.0, crop=16, profiles=bad)


class _MidRng:
    """Deterministic stand-in for the sampler's generator: middle integers, no augmentation."""

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        return (low + high - 1) // 2

    def random(self):
        return 1.0  # every "if random() < 0.5" augmentation is skipped

    def choice(self, seq):
        return seq[(len(seq) - 1) // 2]

    def uniform(self, low, high):
        return 1.0  # gain 1


def test_pair_sampler_residual_reconstructs_hr():
    vol = head()
    s = PairSampler([vol], context_slices=1, residual_scale=5.0, crop=16, seed=0)
    for _, cubic, params in s.pool:
        assert cubic.shape == vol.shape and 1.5 <= params.factor <= 5.0
    s.rng = _MidRng()
    cond, x0 = s.sample(2)
    hr, cubic, params = s.pool[(len(s.pool) - 1) // 2]
    axis = [a for a in range(3) if a != params.axis][0]  # _MidRng's choice of plane
    planar = planar_view(hr, axis, params.axis)
    n, h, w = planar.shape
    y, x = (h - 16) // 2, (w - 16) // 2
    expected = planar[(n - 1) // 2, y : y + 16, x : x + 16]
    rec = (cond[:, 1] + x0[:, 0] / 5.0).numpy()
    np.testing.assert_allclose(rec[0], expected, atol=1e-5)
    cubic = planar_view(cubic, axis, params.axis)
    np.testing.assert_allclose(cond[0].numpy(),
                               cubic[(n - 1) // 2 - 1 : (n - 1) // 2 + 2, y : y + 16, x : x + 16])


def test_teacher_loss_backprops_into_router_and_experts_and_decreases():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny_teacher()
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(2, cfg.in_condition_channels, 32, 32, generator=g)
    x0 = torch.randn(2, 1, 32, 32, generator=g)
    x_t, t, v = diffusion_batch(x0, generator=g)
    assert x_t.shape == x0.shape and t.shape == (2,) and 0 <= t.min() and t.max() <= 999
    loss, stats = teacher_loss(model, x_t, cond, t, v)
    assert torch.isfinite(loss) and set(stats) >= {"expert", "ensemble", "gate_kl", "balance"}
    loss.backward()
    router = [p.grad for p in model.router.parameters()] + \
        [p.grad for p in model.encoder.parameters()]
    assert any(gr is not None and gr.abs().sum() > 0 for gr in router)
    for expert in model.experts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(15):
        opt.zero_grad()
        loss, _ = teacher_loss(model, x_t, cond, t, v)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_distill_target_reproduces_two_ddim_steps():
    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8, generator=g)
    other = torch.randn(4, 1, 8, 8, generator=g)

    def teacher_fn(x, t):  # oracle-like stand-in: pulls towards a blend depending on t
        ab = sched.alpha_bar(t)
        target = x0 + 0.3 * other * (1 - ab).float().view(-1, 1, 1, 1)
        return v_from_x0_eps(target, predict_eps_from_x0(x, target, ab), ab)

    for grid in (grid_for(4, 2), grid_for(8, 1)):
        tg = torch.tensor(grid, dtype=torch.float64)
        for i in range(0, len(grid) - 2, 2):
            t, tm, te = (tg[i].repeat(4), tg[i + 1].repeat(4), tg[i + 2].repeat(4))
            if float(t[0]) == float(te[0]):
                continue
            x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g), sched)
            x_end = two_steps(teacher_fn, x_t, t, tm, te, schedule=sched)
            v = v_for_jump(x_t, x_end, t, te, sched)
            one, _ = ddim_step(x_t, t, te, v, schedule=sched)
            torch.testing.assert_close(one, x_end, atol=1e-4, rtol=0)


def test_train_teacher_and_distill_write_loadable_checkpoints(tmp_path):
    vol = head()
    t_dir = tmp_path / "teacher"
    recipe = DiffusionRecipe(steps=3, batch_size=2, crop=32)
    sha = train_teacher([vol], ModelConfig.tiny_teacher(), t_dir, recipe,
                        provenance={"training_volumes": ["phantom"]})
    ck = load_checkpoint(t_dir)
    assert ck.sha256 == sha
    assert ck.provenance["trained"] is True and ck.provenance["sampling_steps"] == 20
    assert ck.provenance["steps"] == 3 and ck.provenance["training_volumes"] == ["phantom"]
    assert ck.provenance["training"]["batch_size"] == 2  # the recipe, saved whole
    assert ck.provenance["degradation"]["profiles"] == ["gaussian", "box"]  # the sampler's own
    calls = []
    s_dir = tmp_path / "student"
    sha_s = distill_student(t_dir, [vol], ModelConfig.tiny_student(), s_dir,
                            DistillRecipe(teacher_steps=4, steps_per_round=2, batch_size=2,
                                          crop=32),
                            progress=lambda d, n: calls.append((d, n)))
    st = load_checkpoint(s_dir)
    assert st.sha256 == sha_s and st.config.kind == "student"
    p = st.provenance
    assert p["trained"] is True and p["distilled_from"] == sha
    assert p["rounds"] == 1 and p["sampling_steps"] == 2
    assert [h["student_steps"] for h in p["round_history"]] == [2]
    assert calls[-1] == (2, 2)
    assert p["training"]["teacher_steps"] == 4
    distill_student(t_dir, [vol], ModelConfig.tiny_student(), tmp_path / "s1",
                    DistillRecipe(teacher_steps=8, rounds=3, steps=3, batch_size=1, crop=32))
    p1 = load_checkpoint(tmp_path / "s1").provenance
    assert p1["sampling_steps"] == 1
    assert [h["student_steps"] for h in p1["round_history"]] == [4, 2, 1]
    with pytest.raises(ValueError, match="power of two"):
        DistillRecipe(teacher_steps=6, steps=3).schedule()
    with pytest.raises(ValueError, match="steps_per_round, steps or minutes"):
        DistillRecipe(teacher_steps=8).schedule()


class ZeroResidual(torch.nn.Module):
    """Stand-in denoiser whose x0 prediction is always 0 (no correction over cubic)."""

    config = ModelConfig.tiny_student()

    def route(self, cond):
        return None

    def forward(self, x_t, cond, t, gates=None, active_experts=None):
        ab = NoiseSchedule().alpha_bar(t).float().view(-1, 1, 1, 1)
        return x_t * ab.sqrt() / (1 - ab).sqrt()


def test_evaluate_volume():
    hr = head((32, 36, 30))
    res = evaluate_volume(ZeroResidual(), ZeroResidual.config, hr, steps=1, planes=("axial",))
    assert np.isfinite(res["psnr_cubic"]) and res["psnr_model"] == pytest.approx(
        res["psnr_cubic"], abs=1e-3)
    assert abs(res["gain_db"]) < 1e-3 and 0 < res["ssim_cubic"] <= 1
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny_student())
    res = evaluate_volume(model, model.config, hr, steps=1, planes=("axial", "coronal"))
    assert all(np.isfinite(res[k]) for k in ("psnr_cubic", "psnr_model", "gain_db"))


def test_progress_total_of_a_time_capped_run_follows_the_clock():
    from bids_mrisr.sr.training.loop import _expected_total

    # 1,000 steps in 60 s of a 10-minute cap: about 10,000 steps, not the 200,000 budget
    assert _expected_total(1000, 200_000, 10.0, 60.0) == 10_000
    assert _expected_total(1000, 5_000, 10.0, 60.0) == 5_000  # the step budget binds first
    assert _expected_total(1000, 200_000, None, 60.0) == 200_000  # no cap: the budget
    assert _expected_total(5, 200_000, 10.0, 0.1) == 200_000  # too early to tell
