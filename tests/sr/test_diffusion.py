"""Schedule conversions and the DDIM sampler, checked against an oracle denoiser."""

from __future__ import annotations

import pytest
import torch

from bids_mrisr.sr.diffusion import schedule as S
from bids_mrisr.sr.diffusion.sampler import (
    ddim_sample,
    ddim_sigma,
    ddim_step,
    randn,
    respaced_timesteps,
)


def test_alpha_bar_monotone_in_unit_interval() -> None:
    ab = S.cosine_alpha_bars()
    assert ab.shape == (1000,)
    assert torch.all(ab > 0) and torch.all(ab <= 1)
    assert torch.all(ab[1:] < ab[:-1])
    assert S.alpha_bar(-1).item() == 1.0
    assert S.alpha_bar(torch.tensor([0, 999])).tolist() == [ab[0].item(), ab[999].item()]
    mid = S.alpha_bar(torch.tensor(10.5)).item()
    assert ab[11].item() < mid < ab[10].item()
    with pytest.raises(ValueError):
        S.alpha_bar(1000)


@pytest.mark.parametrize("t", [0, 1, 250, 500, 900, 999])
def test_parameterisation_round_trips(t: int) -> None:
    g = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 1, 8, 8, generator=g)
    eps = torch.randn(2, 1, 8, 8, generator=g)
    ab = S.alpha_bar(torch.tensor([t, t]))
    x_t = S.q_sample(x0, torch.tensor([t, t]), eps)
    v = S.v_from_x0_eps(x0, eps, ab)
    torch.testing.assert_close(v, S.v_target(x0, eps, torch.tensor([t, t])))
    torch.testing.assert_close(S.predict_x0_from_v(x_t, v, ab), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(S.predict_eps_from_v(x_t, v, ab), eps, atol=1e-5, rtol=0)
    eps_back = S.predict_eps_from_x0(x_t, x0, ab)
    torch.testing.assert_close(eps_back, eps, atol=1e-4, rtol=0)
    torch.testing.assert_close(S.v_from_x0_eps(x0, eps_back, ab), v, atol=1e-4, rtol=0)


def test_respacing_is_trailing_and_nests() -> None:
    assert respaced_timesteps(1000, 1) == [999]
    assert respaced_timesteps(1000, 2) == [999, 499]  # the last step starts from real noise
    ts = respaced_timesteps(1000, 20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 49 and ts == sorted(ts, reverse=True)
    for steps in (2, 4, 8):  # halving the steps keeps every other timestep
        assert respaced_timesteps(1000, steps) == respaced_timesteps(1000, 2 * steps)[::2]
    assert len(set(respaced_timesteps(1000, 1000))) == 1000
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 0)


def _oracle(x0: torch.Tensor):
    """A perfect denoiser for a known x0: the exact v given x_t and t."""

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_t, target, ab = x_t.double(), x0.double(), S.alpha_bar(t)
        return S.v_from_x0_eps(target, S.predict_eps_from_x0(x_t, target, ab), ab).float()

    return fn


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_ddim_oracle_recovers_x0(steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 1, 6, 7, generator=g) * 0.3
    seen: list[int] = []
    out = ddim_sample(
        _oracle(x0), x0.shape, steps=steps, generator=g, callback=lambda i, n, _: seen.append(i)
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert seen == list(range(steps))


def test_ddim_oracle_stochastic_also_recovers_x0() -> None:
    x0 = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    out = ddim_sample(
        _oracle(x0), x0.shape, steps=10, eta=1.0, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def _toy_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An imperfect denoiser: its samples depend on the noise path."""
    return 0.5 * x_t + torch.tanh(x_t.roll(1, dims=-1)) * (t.view(-1, 1, 1, 1) / 1000)


def test_determinism_and_seeds() -> None:
    shape = (2, 1, 8, 8)

    def run(seed: int, eta: float) -> torch.Tensor:
        return ddim_sample(
            _toy_model, shape, steps=8, eta=eta, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(0, 0.0), run(0, 0.0))
    assert torch.equal(run(3, 1.0), run(3, 1.0))
    assert not torch.allclose(run(0, 1.0), run(1, 1.0))
    # Same start noise, eta differs: the stochastic path moves the result.
    x_T = randn(shape, torch.Generator().manual_seed(5))
    a = ddim_sample(_toy_model, steps=8, eta=0.0, x_T=x_T)
    b = ddim_sample(
        _toy_model, steps=8, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(6)
    )
    c = ddim_sample(
        _toy_model, steps=8, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(7)
    )
    assert not torch.allclose(a, b) and not torch.allclose(b, c)


def test_per_element_generators_make_batching_irrelevant() -> None:
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13)]  # noqa: E731
    full = ddim_sample(_toy_model, (3, 1, 4, 4), steps=4, eta=0.7, generator=gens())
    g = gens()
    part = ddim_sample(_toy_model, (1, 1, 4, 4), steps=4, eta=0.7, generator=[g[2]])
    torch.testing.assert_close(full[2:], part, atol=1e-6, rtol=0)


def test_ddim_step_sigma_and_clip() -> None:
    ab_t, ab_p = S.alpha_bar(torch.tensor(500)), S.alpha_bar(torch.tensor(400))
    assert ddim_sigma(ab_t, ab_p, 0.0).item() == 0.0
    # eta = 1 reproduces the DDPM posterior std.
    beta_like = 1 - ab_t / ab_p
    expected = ((1 - ab_p) / (1 - ab_t) * beta_like).sqrt()
    torch.testing.assert_close(ddim_sigma(ab_t, ab_p, 1.0), expected)
    x_t = torch.full((1, 1, 2, 2), 5.0)
    v = torch.zeros_like(x_t)
    _, x0 = ddim_step(x_t, 500, 400, v, clip_x0=1.0)
    assert x0.abs().max().item() <= 1.0
    with pytest.raises(ValueError):
        ddim_step(x_t, 500, 400, v, eta=0.5)
