"""pi_RL's pure math (vla/rl/objectives.py) against closed forms and hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from vla.flow.flow_matching import denoising_times
from vla.rl.objectives import (
    bounded_std,
    chain_log_prob,
    explained_variance,
    flow_sde_sigma,
    flow_sde_step,
    gae,
    gaussian_entropy,
    gaussian_log_prob,
    grpo_advantages,
    normalize,
    ode_mean,
    ppo_policy_loss,
    value_loss,
)


def test_gaussian_log_prob_and_entropy_are_the_closed_forms():
    x, mean, std = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 0.5]), torch.tensor([0.2, 1.5])
    normal = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), normal.log_prob(x))
    torch.testing.assert_close(gaussian_entropy(std), normal.entropy())


def test_bounded_std_stays_in_its_range():
    raw = torch.tensor([-1e6, -1.0, 0.0, 1.0, 1e6])
    std = bounded_std(raw, 0.08, 0.16)
    lo, hi = torch.tensor(0.08), torch.tensor(0.16)  # the bounds in the tensor's own precision
    assert std.min() >= lo and std.max() <= hi and math.isclose(float(std[2]), 0.12, rel_tol=1e-6)
    with pytest.raises(ValueError):
        bounded_std(raw, 0.2, 0.1)


def flow_noise_chain(velocity, noise: torch.Tensor, stds: torch.Tensor, generator: torch.Generator):
    """A Flow-Noise rollout: ODE means plus learned (here fixed) noise at every step."""
    times = denoising_times(stds.shape[0])
    xs, means = [noise], []
    for k in range(stds.shape[0]):
        mean = ode_mean(xs[-1], velocity(xs[-1], times[k]), times[k] - times[k + 1])
        means.append(mean)
        xs.append(mean + stds[k] * torch.randn(mean.shape, generator=generator))
    return torch.stack(xs), torch.stack(means)


def test_chain_log_prob_is_the_initial_gaussian_plus_each_transition():
    g = torch.Generator().manual_seed(0)
    K, stds = 4, torch.tensor([0.08, 0.1, 0.12, 0.16])[:, None, None].expand(4, 3, 2)
    xs, means = flow_noise_chain(lambda x, t: 0.7 * x - t, torch.randn(3, 2, generator=g), stds, g)
    by_hand = torch.distributions.Normal(0.0, 1.0).log_prob(xs[0]) + sum(
        torch.distributions.Normal(means[k], stds[k]).log_prob(xs[k + 1]) for k in range(K)
    )
    torch.testing.assert_close(chain_log_prob(xs, means, stds, reduce="sum"), by_hand)
    torch.testing.assert_close(chain_log_prob(xs, means, stds, reduce="mean"), by_hand / (K + 1))
    one = torch.tensor([False, False, True, False])  # Flow-SDE's hybrid rollout: one stochastic step
    torch.testing.assert_close(
        chain_log_prob(xs, means[one], stds[one], steps=one),
        torch.distributions.Normal(means[2], stds[2]).log_prob(xs[3]),
    )


def test_flow_sde_sigma_is_finite_at_t_equal_one():
    K = 4
    sigma = flow_sde_sigma(torch.tensor([1.0, 0.75, 0.5, 0.25]), 0.5, K)
    assert torch.isfinite(sigma).all()
    torch.testing.assert_close(sigma[0], torch.tensor(0.5 * math.sqrt(1.0 / 0.25)))
    torch.testing.assert_close(sigma[2], torch.tensor(0.5))


def test_flow_sde_keeps_the_marginals_of_the_ode_on_a_gaussian_toy():
    """Data a ~ N(m, s^2): the exact velocity field is linear; the ODE and the SDE (noise level
    0.5, the reference default) must both end at N(m, s^2) (fixed seed, 200k samples)."""
    m, s, K, n = 0.5, 0.3, 100, 200_000

    def velocity(x, t):  # E[noise - a | x_t = x] for x_t = t noise + (1 - t) a
        var = t**2 + (1 - t) ** 2 * s**2
        return -m + (t - (1 - t) * s**2) / var * (x - (1 - t) * m)

    g = torch.Generator().manual_seed(0)
    times = denoising_times(K, dtype=torch.float64)
    ode = sde = torch.randn(n, generator=g, dtype=torch.float64)
    for k in range(K):
        t, t_next = times[k], times[k + 1]
        ode = ode_mean(ode, velocity(ode, t), t - t_next)
        mean, std = flow_sde_step(sde, velocity(sde, t), t, t_next, 0.5, K)
        sde = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    for samples in (ode, sde):
        assert abs(float(samples.mean()) - m) < 0.01, float(samples.mean())
        assert abs(float(samples.std()) - s) < 0.01, float(samples.std())
    assert not torch.allclose(ode, sde), "the SDE must actually be stochastic"


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    next_values = torch.tensor([[0.4], [0.3], [0.9]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, next_values, torch.tensor([[0.0], [0.0], [1.0]]), gamma, lam)
    # deltas 0.86, -0.13, 1.7; A2 = 1.7, A1 = -0.13 + 0.72 * 1.7, A0 = 0.86 + 0.72 * A1
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.86 + 0.72 * 1.094, 1.094, 1.7]))
    torch.testing.assert_close(ret, adv + values)
    # an episode ending at step 1: no bootstrap there and no credit flowing back across it
    adv, _ = gae(rewards, values, next_values, torch.tensor([[0.0], [1.0], [0.0]]), gamma, lam)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.86 + 0.72 * -0.4, -0.4, 2.0 + 0.81 - 0.3]))


def test_ppo_loss_on_a_hand_made_batch():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))
    out = ppo_policy_loss(new, old, torch.tensor([1.0, -1.0]), clip=0.2)
    torch.testing.assert_close(out.loss, torch.tensor((-1.2 + 0.8) / 2))  # both clipped
    assert float(out.clip_fraction) == 1.0 and float(out.approx_kl) > 0
    # dual clip caps a negative advantage's loss at c |A|
    far = ppo_policy_loss(torch.log(torch.tensor([5.0])), torch.zeros(1), torch.tensor([-1.0]), dual_clip=3.0)
    torch.testing.assert_close(far.loss, torch.tensor(3.0))
    # masked entries count for nothing
    masked = ppo_policy_loss(new, old, torch.tensor([1.0, -1.0]), mask=torch.tensor([True, False]))
    torch.testing.assert_close(masked.loss, torch.tensor(-1.2))


def test_ppo_ratio_is_exactly_one_without_learning():
    logp = torch.randn(64, dtype=torch.float64)
    out = ppo_policy_loss(logp, logp.clone(), torch.randn(64, dtype=torch.float64))
    assert float(out.ratio_mean) == 1.0 and float(out.clip_fraction) == 0.0 and float(out.approx_kl) == 0.0


def test_grpo_normalizes_within_groups_and_drops_uniform_ones():
    returns = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, kept = grpo_advantages(returns, group_size=4)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    assert kept.tolist() == [True] * 4 + [False] * 4
    adv, kept = grpo_advantages(returns, group_size=4, keep_range=None)
    assert kept.all() and torch.all(adv[4:] == 0)
    with pytest.raises(ValueError, match="groups of 3"):
        grpo_advantages(returns, group_size=3)


def test_value_loss_clips_the_move_away_from_the_old_value():
    returns, old = torch.tensor([1.0]), torch.tensor([0.5])
    # the new value jumped to the return: clipped to 0.6, whose error (0.4) is the larger one and counts
    perfect = torch.tensor([1.0])
    torch.testing.assert_close(value_loss(perfect, old, returns, clip=0.1), torch.tensor(0.5 * 0.4**2))
    torch.testing.assert_close(value_loss(perfect, old, returns, clip=None), torch.tensor(0.0))
    # beyond the Huber delta the loss is linear
    torch.testing.assert_close(
        value_loss(torch.tensor([21.0]), torch.tensor([21.0]), returns), torch.tensor(10 * (20 - 5.0))
    )


def test_normalize_and_explained_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    out = normalize(x, mask)
    assert out[3] == 0 and abs(float(out[:3].mean())) < 1e-6
    assert explained_variance(x, x) == 1.0 and math.isnan(explained_variance(x, torch.ones(4)))


def test_kl_penalty_is_zero_unmoved_positive_moved_and_pulls_back():
    from vla.rl.objectives import kl_penalty

    old = torch.tensor([-1.0, -2.0, -0.5])
    assert float(kl_penalty(old.clone(), old)) == 0.0
    new = torch.tensor([-0.5, -2.5, -0.5], requires_grad=True)
    value = kl_penalty(new, old)
    r = torch.exp(torch.tensor([0.5, -0.5, 0.0]))
    assert torch.isclose(value, ((r - 1) - torch.log(r)).mean())
    value.backward()
    assert new.grad[0] > 0 and new.grad[1] < 0 and new.grad[2] == 0  # descending it moves back to old
