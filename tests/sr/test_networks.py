"""Shapes, gating invariants, size budgets and config round-trips of the SR networks."""

from __future__ import annotations

import json

import pytest
import torch

from bids_mrisr.sr.networks import (
    ModelConfig,
    MoETeacher,
    StudentDenoiser,
    build_model,
    count_parameters,
    estimate_flops_per_pixel,
)
from bids_mrisr.sr.networks.blocks import pad_to_multiple
from bids_mrisr.sr.networks.encoder import MultiScaleEncoder
from bids_mrisr.sr.networks.gating import TokenRouter, upsample_gates
from bids_mrisr.sr.networks.unet import ConditionalUNet

SIZES = [(37, 53), (64, 64), (16, 24), (5, 7)]


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def teacher() -> MoETeacher:
    return _model(ModelConfig.tiny_teacher())


@pytest.fixture(scope="module")
def student() -> StudentDenoiser:
    return _model(ModelConfig.tiny_student())


def _inputs(cfg: ModelConfig, H: int, W: int, B: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, H, W, generator=g)
    cond = torch.randn(B, cfg.in_condition_channels, H, W, generator=g)
    t = torch.rand(B, generator=g) * 999
    return x, cond, t


def _structured_cond(cfg: ModelConfig, H: int = 64, W: int = 64) -> torch.Tensor:
    """Left half zeros, right half noise: a router must not treat them alike."""
    cond = torch.zeros(1, cfg.in_condition_channels, H, W)
    cond[..., W // 2 :] = torch.randn(1, cfg.in_condition_channels, H, W - W // 2) * 3
    return cond


@pytest.mark.parametrize("H,W", SIZES)
def test_unet_shapes(H: int, W: int) -> None:
    for stem in (1, 2):
        net = ConditionalUNet(3, 4, (1, 2, 2), 1, 8, stem=stem).eval()
        x = torch.randn(2, 3, H, W)
        with torch.no_grad():
            out, feats = net(x, torch.tensor([1.0, 500.0]), return_features=True)
        assert out.shape == (2, 1, H, W)
        assert feats[-1].shape[-2:] == (-(-H // stem), -(-W // stem))
        assert [f.shape[1] for f in feats] == [8, 8, 4]


@pytest.mark.parametrize("H,W", [(64, 64), (64, 96)])
def test_encoder_and_router_shapes(H: int, W: int) -> None:
    for window in (0, 2):
        enc = MultiScaleEncoder(5, (16, 8, 4), 16, 1, 2, window)
        cond, _ = pad_to_multiple(torch.randn(2, 5, H, W), enc.multiple)
        tokens = enc(cond)
        assert tokens.shape == (2, 16, cond.shape[-2] // 4, cond.shape[-1] // 4)
        probs = TokenRouter(16, 3, 0.2)(tokens)
        assert probs.shape == (2, 3, *tokens.shape[-2:])
        gates = upsample_gates(probs, 4, (H, W))
        assert gates.shape == (2, 3, H, W)
        torch.testing.assert_close(gates.sum(1), torch.ones(2, H, W))


def test_encoder_rejects_unpadded_input() -> None:
    enc = MultiScaleEncoder(5, (16, 8, 4), 16, 1, 2, 2)
    with pytest.raises(ValueError, match="multiple"):
        enc(torch.randn(1, 5, 40, 32))


def test_windowed_attention_is_local() -> None:
    """Windows are independent: a change in one 32x32 window reaches only half a coarse patch
    (8 px = 2 fine tokens) into its neighbours, through the final coarse-to-fine interpolation.
    """
    torch.manual_seed(0)
    enc = MultiScaleEncoder(5, (16, 8, 4), 16, 2, 2, window_size=2).eval()
    cond = torch.randn(1, 5, 128, 128)
    with torch.no_grad():
        a = enc(cond)
        cond2 = cond.clone()
        cond2[..., :32, :32] += 5
        b = enc(cond2)
    assert torch.allclose(a[..., 10:, :], b[..., 10:, :], atol=1e-5)
    assert torch.allclose(a[..., :, 10:], b[..., :, 10:], atol=1e-5)
    assert not torch.allclose(a[..., :8, :8], b[..., :8, :8])


@pytest.mark.parametrize("H,W", SIZES)
def test_teacher_and_student_shapes(teacher, student, H: int, W: int) -> None:
    for model in (teacher, student):
        x, cond, t = _inputs(model.config, H, W)
        with torch.no_grad():
            out = model(x, cond, t)
            out_f, feats = model(x, cond, t, return_features=True)
        assert out.shape == (2, 1, H, W)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, out_f)
        assert feats and feats[-1].shape[0] == 2
    with torch.no_grad():
        gates = teacher.route(cond)
        tok = teacher.route_tokens(cond)
        logits = teacher.route_tokens(cond, return_logits=True)
        per_expert = teacher.expert_outputs(x, cond, t)
    assert gates.shape == (2, 3, H, W)
    assert tok.shape == logits.shape == (2, 3, -(-H // 4), -(-W // 4))
    torch.testing.assert_close(tok, logits.softmax(1))
    assert per_expert.shape == (2, 3, H, W)
    assert student.route(cond) is None


def test_scalar_timestep_and_bad_shapes(teacher, student) -> None:
    x, cond, _ = _inputs(teacher.config, 16, 16)
    with torch.no_grad():
        assert teacher(x, cond, torch.tensor(3.0)).shape == x.shape
        assert student(x, cond, 3.0).shape == x.shape
        with pytest.raises(ValueError, match="condition"):
            teacher(x, cond[:, :3], torch.zeros(2))
        with pytest.raises(ValueError, match="x_t"):
            student(x[..., :8], cond, torch.zeros(2))
        with pytest.raises(ValueError, match="active experts"):
            teacher(x, cond, torch.zeros(2), active_experts=[5])


def test_gates_sum_to_one_and_vary(teacher) -> None:
    cond = _structured_cond(teacher.config)
    with torch.no_grad():
        gates = teacher.route(cond)
    torch.testing.assert_close(gates.sum(1), torch.ones(1, 64, 64), atol=1e-5, rtol=0)
    assert (gates >= 0).all()
    left = gates[..., :, :24].mean(dim=(-1, -2))
    right = gates[..., :, 40:].mean(dim=(-1, -2))
    assert (left - right).abs().max() > 1e-3
    assert gates.std(dim=(-1, -2)).max() > 1e-3


def test_gates_do_not_depend_on_xt(teacher) -> None:
    x, cond, t = _inputs(teacher.config, 32, 32)
    with torch.no_grad():
        routed = teacher(x, cond, t, gates=teacher.route(cond))
        torch.testing.assert_close(teacher(x, cond, t), routed)


def test_mixture_equals_manual_sum(teacher) -> None:
    x, cond, t = _inputs(teacher.config, 24, 40)
    with torch.no_grad():
        gates = teacher.route(cond)
        per = teacher.expert_outputs(x, cond, t)
        full = teacher(x, cond, t, gates=gates)
        torch.testing.assert_close(full, (gates * per).sum(1, keepdim=True))
        sub = teacher(x, cond, t, gates=gates, active_experts=[2, 0])
        g = gates[:, [0, 2]]
        manual = (g / g.sum(1, keepdim=True) * per[:, [0, 2]]).sum(1, keepdim=True)
        torch.testing.assert_close(sub, manual)
        only = teacher(x, cond, t, gates=gates, active_experts=[1])
        torch.testing.assert_close(only, per[:, 1:2])


def test_return_features(teacher, student) -> None:
    for model in (teacher, student):
        x, cond, t = _inputs(model.config, 37, 53)
        with torch.no_grad():
            _, feats = model(x, cond, t, return_features=True)
        assert isinstance(feats, list) and len(feats) == len(model.config.channel_mults)
        sizes = [f.shape[-1] for f in feats]
        assert sizes == sorted(sizes)  # coarse to fine
    with torch.no_grad():
        _, sub = teacher(x, cond, t, active_experts=[1], return_features=True)
        _, per = teacher.expert_outputs(x, cond, t, experts=[1], return_features=True)
    for a, b in zip(sub, per[0], strict=True):
        torch.testing.assert_close(a, b)


def test_teacher_backward_reaches_router_and_experts(teacher) -> None:
    model = _model(ModelConfig.tiny_teacher())
    model.train()
    x, cond, t = _inputs(model.config, 32, 32)
    model(x, cond, t).pow(2).mean().backward()
    assert model.router.queries.grad is not None
    assert model.encoder.embeds[0].weight.grad is not None
    assert all(e.unet.in_conv.weight.grad is not None for e in model.experts)


def test_default_budgets() -> None:
    """The teacher is the larger model (3x the student's parameters); per-pixel FLOPs stay
    within the CPU budgets (the student's keeps 2 mm -> 1 mm under 90 s on 2 cores)."""
    teacher = build_model(ModelConfig.teacher_default())
    student = build_model(ModelConfig.student_default())
    n_t, n_s = count_parameters(teacher), count_parameters(student)
    print(f"teacher params {n_t}, student params {n_s}, ratio {n_t / n_s:.1f}")
    assert n_s * 3 <= n_t
    assert 0.4e6 <= n_s <= 0.5e6
    f_s = estimate_flops_per_pixel(student, 64, 64)
    f_t = estimate_flops_per_pixel(teacher, 64, 64)
    assert f_s <= 50e3
    assert f_t <= 60e3


def test_config_round_trip() -> None:
    for cfg in (ModelConfig.teacher_default(), ModelConfig.student_default(),
                ModelConfig.tiny_teacher(), ModelConfig.tiny_student()):
        d = json.loads(json.dumps(cfg.to_dict()))
        back = ModelConfig.from_dict(d)
        assert back == cfg
        assert isinstance(back.patch_sizes, tuple) and isinstance(back.channel_mults, tuple)
    assert ModelConfig.teacher_default().in_condition_channels == 5
    assert ModelConfig.teacher_default().tile_alignment == 64
    assert ModelConfig.student_default().tile_alignment == 8
    assert ModelConfig(kind="student", context_slices=3).in_condition_channels == 7


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="oracle")
    with pytest.raises(ValueError, match="expert_names"):
        ModelConfig(kind="teacher", num_experts=2)
    with pytest.raises(ValueError, match="patch_sizes"):
        ModelConfig(kind="teacher", patch_sizes=(16, 6, 4))
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"kind": "student", "colour": "blue"})
    with pytest.raises(ValueError):
        MoETeacher(ModelConfig.tiny_student())


def test_tile_alignment_gives_tile_consistency(teacher) -> None:
    """A tile cut at a multiple of tile_alignment routes exactly like the whole image there."""
    a = teacher.config.tile_alignment
    cond = torch.randn(1, teacher.config.in_condition_channels, 2 * a, 2 * a)
    with torch.no_grad():
        whole = teacher.route(cond)
        tile = teacher.route(cond[..., a:, a:])
    m = 12  # half a coarse patch (8 px) + half a fine token (2 px) of interpolation, rounded up
    torch.testing.assert_close(whole[..., a + m :, a + m :], tile[..., m:, m:])


def test_shared_film_inference_path_matches_training_path() -> None:
    """Inference folds one batch-wide FiLM into the norm and works in place; the prediction
    must be the training path's, and a batch with different t per slice must still differ."""
    torch.manual_seed(0)
    net = ConditionalUNet(in_channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
                          time_dim=16, stem=2, acquisition_features=3).eval()
    for p in net.parameters():  # FiLM and acquisition start at zero: make them matter
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 3, 20, 28)
    acquisition = torch.tensor([[1.0, 0.5, 0.0]]).expand(3, 3)
    for t in (torch.full((3,), 0.3), torch.tensor([0.1, 0.5, 0.9])):
        with torch.enable_grad():
            reference = net(x, t, acquisition=acquisition)
        with torch.inference_mode():
            fast = net(x, t, acquisition=acquisition)
        torch.testing.assert_close(fast, reference.detach(), rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        per_slice = net(x, torch.tensor([0.1, 0.5, 0.9]))
        shared = net(x, torch.full((3,), 0.1))
    assert not torch.allclose(per_slice[1:], shared[1:], atol=1e-3)
    torch.testing.assert_close(per_slice[:1], shared[:1], rtol=1e-4, atol=1e-5)
