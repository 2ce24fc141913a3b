"""Stochastic denoising for RL: the registered exploration schemes of pi_RL.

A flow policy samples a chunk deterministically (K Euler steps of its velocity, or MeanFlow
steps of its average velocity). RL needs a stochastic policy with a likelihood, so each scheme
turns some denoising steps into Gaussian transitions ``x_{k+1} ~ N(mean_k, std_k^2)``:

- ``flow-noise``: every step, ODE mean plus a std from a small learned noise network on the
  action expert's per-token hidden state (bounded to ``std_range``); the likelihood includes the
  initial ``N(0, I)`` term (the reference's joint log-probability).
- ``flow-sde``: the marginal-preserving SDE; by default one step per rollout call, drawn at
  random, is stochastic and carries the likelihood (the reference's hybrid rollout, about 1/K of
  the training compute); ``hybrid=False`` makes every step stochastic.

A scheme sees the policy only through a ``StepFn``: ``step(x, t, t_next) -> (u, hidden)`` with
``u`` the (average) velocity that takes ``x`` from ``t`` to ``t_next`` and ``hidden`` the
expert's last hidden state per action token. :func:`rollout` samples with it and records the
chain; :func:`chain_log_prob_of` recomputes the likelihood of a recorded chain with gradients
(the PPO update), through the same operations, so the importance ratio of an unchanged policy
is exactly 1. Evaluation never uses these: it runs the deterministic sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vla.flow.flow_matching import denoising_times, expand_time
from vla.registry import Registry
from vla.rl.objectives import bounded_std, chain_log_prob, flow_sde_step, gaussian_entropy, ode_mean

StepFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``step(x (B, H, A), t (B,), t_next (B,)) -> (u (B, H, A), hidden (B, H, d))``."""


@dataclass(frozen=True)
class Rollout:
    """One stochastic denoising of a batch of chunks (normalized action space)."""

    xs: Tensor  # (K + 1, B, H, A): xs[0] the initial noise, xs[K] the chunk
    stochastic: Tensor  # (K,) bool: the steps that were sampled and carry the likelihood
    log_prob: Tensor  # (B, H, A) per-element log-likelihood (reduced over steps)
    entropy: Tensor  # (B, H, A) mean Gaussian entropy of the stochastic steps

    @property
    def actions(self) -> Tensor:
        return self.xs[-1]


class FlowNoise(nn.Module):
    """Learned exploration noise: ``std = bounded_std(noise_net(hidden), *std_range)`` per
    action token and dimension, ODE means at every step."""

    def __init__(
        self, d_model: int, action_dim: int, std_range: tuple[float, float] = (0.08, 0.16), detach_features: bool = True
    ):
        super().__init__()
        # detached: the entropy bonus, a small gradient of constant sign that Adam scales up to
        # full steps, would otherwise reshape the expert's features toward the widest noise
        self.detach_features = detach_features
        bounded_std(torch.zeros(1), *std_range)  # validates the range
        self.std_range = std_range
        self.noise_net = nn.Sequential(
            nn.Linear(d_model, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, action_dim)
        )

    def stochastic_steps(self, num_steps: int, generator: torch.Generator | None) -> Tensor:
        return torch.ones(num_steps, dtype=torch.bool)

    def transition(
        self, x: Tensor, u: Tensor, hidden: Tensor, t: Tensor, t_next: Tensor, num_steps: int
    ) -> tuple[Tensor, Tensor]:
        std = bounded_std(self.noise_net(hidden.detach() if self.detach_features else hidden), *self.std_range)
        return ode_mean(x, u, expand_time(t - t_next, x)), std

    @property
    def includes_initial(self) -> bool:
        return True


class FlowSDE(nn.Module):
    """The ODE turned into an SDE with the same marginals (``noise_level`` a in
    ``sigma_t = a sqrt(t / (1 - t))``); hybrid: one random stochastic step per rollout call."""

    def __init__(self, noise_level: float = 0.5, hybrid: bool = True, ignore_last: bool = False):
        super().__init__()
        if not noise_level > 0:
            raise ValueError(f"noise_level must be > 0, got {noise_level}")
        self.noise_level, self.hybrid, self.ignore_last = noise_level, hybrid, ignore_last

    def stochastic_steps(self, num_steps: int, generator: torch.Generator | None) -> Tensor:
        if not self.hybrid:
            return torch.ones(num_steps, dtype=torch.bool)
        choices = num_steps - 1 if self.ignore_last and num_steps > 1 else num_steps
        j = int(torch.randint(choices, (1,), generator=generator))
        return torch.arange(num_steps) == j

    def transition(
        self, x: Tensor, u: Tensor, hidden: Tensor, t: Tensor, t_next: Tensor, num_steps: int
    ) -> tuple[Tensor, Tensor]:
        """(sigma_t's finite cap at t = 1 depends on K = ``num_steps``)"""
        return flow_sde_step(x, u, t[0], t_next[0], self.noise_level, num_steps)

    @property
    def includes_initial(self) -> bool:
        return False


ExplorationScheme = FlowNoise | FlowSDE
EXPLORATION: Registry[Callable[..., ExplorationScheme]] = Registry("RL algorithm")
EXPLORATION.add("flow-noise", FlowNoise)
EXPLORATION.add("flow-sde", FlowSDE)


def _log_prob_and_entropy(
    scheme: ExplorationScheme, xs: Tensor, means: list[Tensor], stds: list[Tensor], stochastic: Tensor, reduce: str
) -> tuple[Tensor, Tensor]:
    mean_t, std_t = torch.stack(means), torch.stack(stds)
    steps = None if scheme.includes_initial else stochastic  # Flow-Noise: every step and the initial term
    return chain_log_prob(xs, mean_t, std_t, steps=steps, reduce=reduce), gaussian_entropy(std_t).mean(0)


def rollout(
    scheme: ExplorationScheme,
    step: StepFn,
    noise: Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    reduce: str = "mean",
) -> Rollout:
    """Sample chunks with ``scheme``'s stochastic steps (the others follow the ODE) and record
    the chain; call it under ``torch.no_grad()`` when collecting experience."""
    times = denoising_times(num_steps)
    stochastic = scheme.stochastic_steps(num_steps, generator)
    batch = noise.shape[0]
    xs, means, stds = [noise], [], []
    x = noise
    for k in range(num_steps):
        t, t_next = times[k].repeat(batch).to(noise), times[k + 1].repeat(batch).to(noise)
        u, hidden = step(x, t, t_next)
        if stochastic[k]:
            mean, std = scheme.transition(x, u, hidden, t, t_next, num_steps)
            x = mean + std * torch.randn(mean.shape, generator=generator).to(mean)
            means.append(mean)
            stds.append(std)
        else:
            x = ode_mean(x, u, times[k] - times[k + 1])
        xs.append(x)
    xs_t = torch.stack(xs)
    log_prob, entropy = _log_prob_and_entropy(scheme, xs_t, means, stds, stochastic, reduce)
    return Rollout(xs=xs_t, stochastic=stochastic, log_prob=log_prob, entropy=entropy)


def chain_log_prob_of(
    scheme: ExplorationScheme, step: StepFn, xs: Tensor, stochastic: Tensor, reduce: str = "mean"
) -> tuple[Tensor, Tensor]:
    """(log-likelihood, entropy), both (B, H, A), of a recorded chain under the current policy
    and scheme, with gradients: only the stochastic steps are re-evaluated."""
    num_steps = xs.shape[0] - 1
    times = denoising_times(num_steps)
    batch = xs.shape[1]
    means, stds = [], []
    for k in torch.nonzero(stochastic).flatten().tolist():
        t, t_next = times[k].repeat(batch).to(xs), times[k + 1].repeat(batch).to(xs)
        u, hidden = step(xs[k], t, t_next)
        mean, std = scheme.transition(xs[k], u, hidden, t, t_next, num_steps)
        means.append(mean)
        stds.append(std)
    return _log_prob_and_entropy(scheme, xs, means, stds, stochastic, reduce)


def policy_step_fn(policy, prefix) -> StepFn:
    """The StepFn of a FlowPolicy for one encoded observation batch: its head's (average)
    velocity from ``t`` to ``t_next`` and the expert's last hidden state per action token."""
    captured: list[Tensor] = []

    def expert(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        out, hidden = policy.expert(prefix, z, r, t)
        captured.append(hidden[-1])
        return out

    u = policy.action_head.average_velocity(expert)

    def step(x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        captured.clear()
        return u(x, t_next, t), captured[-1]

    return step
