"""Action heads: what the action expert predicts, how it is trained, and how a chunk is sampled.

One small protocol, one registry (``ACTION_HEADS``), so that the policy, the training loop and
later samplers (RL's Flow-Noise / Flow-SDE, the verifier) never compare head names.

The expert is passed in as ``expert(x, r, t) -> output`` on a ``(B, H, A)`` chunk in
normalized space. Both heads feed it the same time features ``(t, t - r)``; flow matching is
trained with ``r = t`` and so is its own average velocity over an Euler step, which lets one
sampler (``meanflow_sample``) serve both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from vla.flow import flow_matching_loss, meanflow_loss, meanflow_sample, sample_flow_time, sample_meanflow_times
from vla.registry import Registry

ExpertFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, r, t) -> velocity or average velocity


@dataclass(frozen=True)
class HeadLoss:
    """Per-sample loss with the times it was drawn at (the dispersive term reuses them)."""

    per_sample: Tensor
    t: Tensor
    r: Tensor


class ActionHead(Protocol):
    """What a head must provide. Hyperparameters come from the policy config it is built with."""

    @property
    def default_inference_steps(self) -> int: ...

    def loss(self, expert: ExpertFn, target: Tensor, noise: Tensor, generator: torch.Generator | None) -> HeadLoss: ...

    def average_velocity(self, expert: ExpertFn) -> ExpertFn:
        """``u(z, r, t)``: the displacement rate from time t to time r the sampler steps with."""
        ...

    def sample(self, u: ExpertFn, noise: Tensor, num_steps: int) -> Tensor:
        """Normalized actions from ``noise`` (t = 1) in ``num_steps`` function evaluations."""
        ...


@dataclass(frozen=True)
class FlowMatchingHead:
    """pi0: velocity ``v(x_t, t)``, t ~ Beta(alpha, beta), K Euler steps (10 by default)."""

    time_alpha: float = 1.5
    time_beta: float = 1.0
    default_inference_steps: int = 10

    def loss(self, expert: ExpertFn, target: Tensor, noise: Tensor, generator: torch.Generator | None) -> HeadLoss:
        t = sample_flow_time(target.shape[0], generator=generator, alpha=self.time_alpha, beta=self.time_beta).to(
            target
        )
        per_sample = flow_matching_loss(lambda x, tt: expert(x, tt, tt), target, noise, t)
        return HeadLoss(per_sample, t, t)

    def average_velocity(self, expert: ExpertFn) -> ExpertFn:
        return lambda z, r, t: expert(z, t, t)  # trained with r = t: the velocity ignores r

    def sample(self, u: ExpertFn, noise: Tensor, num_steps: int) -> Tensor:
        return meanflow_sample(u, noise, num_steps=num_steps, clamp=None)


@dataclass(frozen=True)
class MeanFlowHead:
    """DM1/MP1: average velocity ``u(z_t, r, t)`` with the JVP MeanFlow target; 1 NFE by default."""

    flow_ratio: float = 0.5
    mu: float = -0.4
    sigma: float = 1.0
    adaptive_p: float = 0.0
    clamp: float | None = None
    dudt: str = "jvp"
    default_inference_steps: int = 1

    def loss(self, expert: ExpertFn, target: Tensor, noise: Tensor, generator: torch.Generator | None) -> HeadLoss:
        t, r = sample_meanflow_times(
            target.shape[0], flow_ratio=self.flow_ratio, mu=self.mu, sigma=self.sigma, generator=generator
        )
        t, r = t.to(target), r.to(target)
        per_sample, _ = meanflow_loss(expert, target, noise, t, r, adaptive_p=self.adaptive_p, dudt=self.dudt)
        return HeadLoss(per_sample, t, r)

    def average_velocity(self, expert: ExpertFn) -> ExpertFn:
        return expert

    def sample(self, u: ExpertFn, noise: Tensor, num_steps: int) -> Tensor:
        return meanflow_sample(u, noise, num_steps=num_steps, clamp=self.clamp)


# Builds a head from the policy config's fields (duck-typed, so that config -> heads stays one-way).
HeadFactory = Callable[[Any], ActionHead]


ACTION_HEADS: Registry[HeadFactory] = Registry("action head")
ACTION_HEADS.add("flow_matching", lambda c: FlowMatchingHead(time_alpha=c.flow_time_alpha, time_beta=c.flow_time_beta))
ACTION_HEADS.add(
    "meanflow",
    lambda c: MeanFlowHead(
        flow_ratio=c.meanflow_ratio,
        mu=c.meanflow_mu,
        sigma=c.meanflow_sigma,
        adaptive_p=c.meanflow_adaptive_p,
        clamp=c.meanflow_clamp,
        dudt=c.meanflow_dudt,
    ),
)
