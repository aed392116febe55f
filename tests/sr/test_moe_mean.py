"""The MoE teacher as a posterior-mean regressor (``--recipe moe``): sparse routing, experts
trained only where they are routed, and the check that learned gates beat uniform ones."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from bids_mrisr.sr.networks import ModelConfig, build_model
from bids_mrisr.sr.networks.gating import keep_top_k
from bids_mrisr.sr.training.losses import gate_benefit, moe_mean_loss


def _mean_teacher(top_k: int) -> nn.Module:
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny_teacher(), prediction_type="mean",
                                 router_top_k=top_k, acquisition_features=3)
    return build_model(config)


def test_top_k_keeps_k_experts_per_token() -> None:
    probs = torch.rand(2, 4, 3, 5).softmax(dim=1)
    for k in (1, 2, 3):
        kept = keep_top_k(probs, k)
        assert torch.equal((kept > 0).sum(dim=1), torch.full((2, 3, 5), k))
        torch.testing.assert_close(kept.sum(dim=1), torch.ones(2, 3, 5))
        largest = probs.topk(k, dim=1).indices
        assert torch.all(kept.gather(1, largest) > 0)  # the k most probable ones are kept
    assert torch.equal(keep_top_k(probs, 0), probs)
    assert torch.equal(keep_top_k(probs, 4), probs)


def test_router_top_k_is_validated() -> None:
    with pytest.raises(ValueError, match="router_top_k"):
        dataclasses.replace(ModelConfig.tiny_teacher(), router_top_k=4)


def _route_everything_to_expert_0(teacher: nn.Module) -> None:
    """Every token gets the same feature v; expert 0's query is v, the others' -v."""
    router = teacher.router
    with torch.no_grad():
        v = torch.randn(router.proj.out_features)
        router.proj.weight.zero_()
        router.proj.bias.copy_(v)
        router.queries.copy_(-v.expand_as(router.queries))
        router.queries[0] = v


@pytest.mark.parametrize("top_k, others_learn", [(1, False), (0, True)])
def test_an_expert_learns_only_where_it_is_routed(top_k: int, others_learn: bool) -> None:
    teacher = _mean_teacher(top_k)
    _route_everything_to_expert_0(teacher)
    cond = torch.randn(2, teacher.config.in_condition_channels, 32, 32)
    x0 = torch.randn(2, 1, 32, 32)
    code = torch.zeros(2, 3)
    loss, stats = moe_mean_loss(teacher, cond, x0, code)
    loss.backward()
    grads = [sum(float(p.grad.abs().sum()) for p in e.parameters() if p.grad is not None)
             for e in teacher.experts]
    assert grads[0] > 0
    assert (min(grads[1:]) > 0) is others_learn, grads
    assert stats["usage_0"] > 0.99  # the router sends every token to expert 0


class _TwoHalves(nn.Module):
    """Stand-in teacher: expert 0 is right on the left half of each crop, expert 1 on the
    right half; ``route`` gives the right (or, reversed, the wrong) expert everywhere."""

    def __init__(self, reversed_gates: bool = False) -> None:
        super().__init__()
        self.config = dataclasses.replace(ModelConfig.tiny_teacher(), num_experts=2,
                                          expert_names=("a", "b"), expert_biases=("none",) * 2)
        self.reversed_gates = reversed_gates

    def route(self, cond: torch.Tensor) -> torch.Tensor:
        b, _, h, w = cond.shape
        left = torch.zeros(b, 1, h, w)
        left[..., : w // 2] = 1.0
        gates = torch.cat([left, 1 - left], dim=1)
        return gates.flip(1) if self.reversed_gates else gates

    def expert_outputs(self, x_t, cond, t, acquisition=None) -> torch.Tensor:
        x0 = cond[:, :1]
        w = x0.shape[-1]
        wrong_left = x0.clone()
        wrong_left[..., : w // 2] += 1.0
        wrong_right = x0.clone()
        wrong_right[..., w // 2:] += 1.0
        return torch.cat([wrong_right, wrong_left], dim=1)


def test_gate_benefit_scores_learned_against_uniform_gates() -> None:
    cond = torch.randn(3, 5, 8, 8)
    batches = [(cond, cond[:, :1].clone(), torch.zeros(3, 3))]
    right = gate_benefit(_TwoHalves(), batches)
    assert right["l1_learned_gates"] == pytest.approx(0.0, abs=1e-6)
    assert right["l1_uniform_gates"] == pytest.approx(0.5, abs=1e-6)  # each half off by 1/2
    assert right["l1_each_expert_alone"] == pytest.approx([0.5, 0.5], abs=1e-6)
    assert right["beats_uniform"] is True
    assert right["gate_entropy"] == pytest.approx(0.0, abs=1e-6)
    wrong = gate_benefit(_TwoHalves(reversed_gates=True), batches)
    assert wrong["l1_learned_gates"] == pytest.approx(1.0, abs=1e-6)
    assert wrong["beats_uniform"] is False


def test_moe_recipe_trains_a_mean_teacher_the_engine_runs(tmp_path) -> None:
    """A few CPU steps of the tiny MoE mean teacher: a checkpoint whose provenance holds the
    gate check, which the engine runs in one deterministic pass with gating maps."""
    import numpy as np

    from bids_mrisr.sr.checkpoint import load_checkpoint
    from bids_mrisr.sr.inference import run_loaded
    from bids_mrisr.sr.options import SROptions
    from bids_mrisr.sr.training.regression import RegressionRecipe, train_mean_regressor
    from tests.sr.test_regression import _sharp_phantom

    vol = _sharp_phantom((32, 32, 32))
    config = _mean_teacher(2).config
    train_mean_regressor([vol], config, tmp_path / "teacher", RegressionRecipe(
        steps=20, batch_size=4, crop=32, seed=0, threads=1))
    meta = json.loads((tmp_path / "teacher" / "model.json").read_text())
    gates = meta["provenance"]["gates"]
    assert set(gates) >= {"l1_learned_gates", "l1_uniform_gates", "beats_uniform",
                          "gate_entropy", "mean_gate"}
    assert "top-2" in meta["provenance"]["objective"]
    loaded = load_checkpoint(tmp_path / "teacher")
    low = vol.copy()
    result = run_loaded(low, loaded.model, loaded.config,
                        SROptions(method="teacher", blurred_axes=(2,), axis_factors=(1, 1, 3),
                                  threads=1, flip_views=1))
    assert result.info["Sampler"] == "direct posterior-mean regression"
    assert result.gates is not None and result.gates.shape == (3, *vol.shape)
    np.testing.assert_allclose(result.gates.sum(axis=0), 1.0, atol=1e-4)


def _assert_computes_the_student(teacher, student, config, *, tell_student: bool) -> None:
    """The upcycled ``teacher``, told two acquisition codes, gives the ``student``'s output
    (told the same codes, or nothing if it is blind)."""
    from bids_mrisr.sr.objectives import predict_mean

    cond = torch.randn(2, config.in_condition_channels, 32, 32)
    code = torch.tensor([[0.0, 1.0, 0.0], [-0.5, -1.0, 0.3]])
    with torch.no_grad():
        expected = predict_mean(student, cond, code if tell_student else None)
        got = predict_mean(teacher.eval(), cond, code)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_upcycled_teacher_starts_as_the_student(tmp_path) -> None:
    """Every expert starts as a copy of the student (the edge expert's extra input at zero), so
    the routed mixture computes exactly what the student did, whatever the router says."""
    from bids_mrisr.sr.checkpoint import save_checkpoint
    from bids_mrisr.sr.training.regression import _warm_start

    torch.manual_seed(1)
    student_config = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                                         acquisition_features=3)
    student = build_model(student_config).eval()
    with torch.no_grad():  # a trained-looking student: non-zero acquisition weights
        student.unet.acquisition.weight.normal_(0, 0.5)
    save_checkpoint(student, tmp_path / "student", {})
    config = ModelConfig.upcycled_teacher(student_config)
    teacher = build_model(config)
    info = _warm_start(teacher, config, tmp_path / "student")
    assert info["upcycled_experts"] == 3
    _assert_computes_the_student(teacher, student, config, tell_student=True)


def test_a_blind_student_upcycles_into_a_conditioned_teacher(tmp_path) -> None:
    """As a blind student fine-tunes into a conditioned one, its copies may start a conditioned
    teacher: the experts' acquisition input starts at zero, so the start is the student."""
    from bids_mrisr.sr.checkpoint import CheckpointError, save_checkpoint
    from bids_mrisr.sr.training.regression import _warm_start

    torch.manual_seed(2)
    blind = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean")
    student = build_model(blind).eval()
    save_checkpoint(student, tmp_path / "student", {})
    config = dataclasses.replace(ModelConfig.upcycled_teacher(blind), acquisition_features=3)
    teacher = build_model(config)
    _warm_start(teacher, config, tmp_path / "student")
    _assert_computes_the_student(teacher, student, config, tell_student=False)
    other = dataclasses.replace(config, base_width=config.base_width * 2)
    with pytest.raises(CheckpointError, match="upcycles only"):
        _warm_start(build_model(other), other, tmp_path / "student")


def test_a_router_only_run_keeps_the_upcycled_experts_and_trains_the_router(tmp_path) -> None:
    """``train_experts = false``: the saved teacher's experts are exactly the students that
    started them; only the router (and its encoder) moved."""
    from bids_mrisr.sr.checkpoint import load_checkpoint, save_checkpoint
    from bids_mrisr.sr.training.regression import (
        RegressionRecipe,
        _warm_start,
        train_mean_regressor,
    )
    from tests.sr.test_regression import _sharp_phantom

    students = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        config = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                                     acquisition_features=3)
        students.append(build_model(config))
        save_checkpoint(students[-1], tmp_path / f"s{seed}", {})
    config = ModelConfig.upcycled_teacher(students[0].config)
    starts = [tmp_path / "s3", tmp_path / "s4"]
    torch.manual_seed(0)
    before = build_model(config)
    _warm_start(before, config, starts)
    train_mean_regressor([_sharp_phantom((32, 32, 32))], config, tmp_path / "teacher",
                         RegressionRecipe(steps=15, batch_size=4, crop=32, seed=0, threads=1,
                                          lr=1e-2, train_experts=False), init_from=starts)
    after = load_checkpoint(tmp_path / "teacher").model
    for k, expert in enumerate(after.experts):  # expert k started as student k mod 2
        torch.testing.assert_close(expert.state_dict(), before.experts[k].state_dict())
    moved = [not torch.equal(a, b) for a, b in zip(after.router.state_dict().values(),
                                                   before.router.state_dict().values(),
                                                   strict=True)]
    assert any(moved)


def test_students_of_other_shapes_start_experts_that_keep_them(tmp_path) -> None:
    """Students that differ in width, levels or blocks per level upcycle into one teacher:
    expert k keeps student k mod n's shape and computes exactly it; the shapes survive a save
    and load, tiles align to the deepest expert, and anything else that differs is refused."""
    from bids_mrisr.sr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from bids_mrisr.sr.objectives import predict_mean
    from bids_mrisr.sr.training.regression import _warm_start

    base = dataclasses.replace(ModelConfig.tiny_student(), prediction_type="mean",
                               acquisition_features=3)
    shapes = [base, dataclasses.replace(base, channel_mults=(1, 2, 2)),
              dataclasses.replace(base, base_width=6, num_res_blocks=2)]
    students = []
    for k, shape in enumerate(shapes):
        torch.manual_seed(10 + k)
        students.append(build_model(shape).eval())
        save_checkpoint(students[-1], tmp_path / f"s{k}", {})
    config = ModelConfig.upcycled_teacher(base, num_experts=3, others=shapes[1:])
    assert config.expert_shapes == ((4, (1, 2), 1), (4, (1, 2, 2), 1), (6, (1, 2), 2))
    assert config.tile_alignment % (config.stem * 4) == 0  # three levels in expert 1
    assert ModelConfig.upcycled_teacher(base, others=[base]).expert_shapes == ()
    assert "expert_shapes" not in ModelConfig.upcycled_teacher(base).to_dict()
    teacher = build_model(config)
    _warm_start(teacher, config, [tmp_path / f"s{k}" for k in range(3)])
    save_checkpoint(teacher, tmp_path / "teacher", {})
    loaded = load_checkpoint(tmp_path / "teacher")
    assert loaded.config == config
    cond = torch.randn(2, config.in_condition_channels, 32, 32)
    code = torch.tensor([[0.0, 1.0, 0.0], [-0.5, -1.0, 0.3]])
    from bids_mrisr.sr.objectives import mean_call_inputs

    x_t, t = mean_call_inputs(cond)
    with torch.no_grad():
        for k, student in enumerate(students):  # each expert alone is its student
            only_k = torch.zeros(2, 3, 32, 32)
            only_k[:, k] = 1
            got = loaded.model.eval()(x_t, cond, t, gates=only_k, acquisition=code)
            torch.testing.assert_close(got, predict_mean(student, cond, code),
                                       rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="cannot be mixed"):
            loaded.model(x_t, cond, t, return_features=True, acquisition=code)
    # the engine runs it as any teacher: tiles on the deepest expert's grid, gate maps out
    import numpy as np

    from bids_mrisr.sr.inference import run_loaded
    from bids_mrisr.sr.options import SROptions
    from tests.sr.test_regression import _sharp_phantom

    vol = _sharp_phantom((36, 40, 30))
    result = run_loaded(vol, loaded.model, loaded.config,
                        SROptions(method="teacher", blurred_axes=(2,), axis_factors=(1, 1, 3),
                                  threads=1, flip_views=1))
    assert result.image.shape == vol.shape and np.isfinite(result.image).all()
    assert result.gates is not None and result.gates.shape == (3, *vol.shape)
    # its output can teach a student, its mixed-shape features cannot
    from bids_mrisr.sr.training.distill_mean import MeanDistillRecipe, _teacher_for

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="cannot guide a student"):
        _teacher_for(tmp_path / "teacher", students[0], MeanDistillRecipe(), cpu)
    _, projector, _ = _teacher_for(tmp_path / "teacher", students[0],
                                   MeanDistillRecipe(feature_weight=0.0), cpu)
    assert projector is None
    other = dataclasses.replace(base, context_slices=1)
    with pytest.raises(ValueError, match="differ in base_width, channel_mults and "):
        ModelConfig.upcycled_teacher(base, others=[other])
    save_checkpoint(build_model(other), tmp_path / "other", {})
    with pytest.raises(CheckpointError, match="differ in base_width"):
        _warm_start(build_model(config), config, [tmp_path / "s0", tmp_path / "other"])
