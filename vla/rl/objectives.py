"""The math of pi_RL as pure tensor functions (no modules, no global state).

Time convention: :mod:`vla.flow`'s (``t = 1`` noise, ``t = 0`` data, sampling from 1 down to 0).
A K-step chain has times ``t_k = 1 - k/K`` and steps ``x_k -> x_{k+1}`` of size
``delta = t_k - t_{k+1}``. Each stochastic step is a Gaussian ``x_{k+1} ~ N(mean_k, std_k^2)``:

- **Flow-Noise**: the ODE mean ``x - delta * v`` and a learned std, squashed into a range
  (:func:`bounded_std`).
- **Flow-SDE**: the Flow-GRPO conversion of the ODE into an SDE with the same marginals,
  ``sigma_t = a * sqrt(t / (1 - t))`` (the ``t = 1`` in the denominator replaced by ``1 - 1/K``,
  as the reference does, so it stays finite), discretized with Euler-Maruyama
  (:func:`flow_sde_step`).

The chunk log-likelihood of the denoising MDP is the initial ``N(0, I)`` term plus the K
transition terms; the reference code averages the K + 1 terms instead of summing them (a
1/(K+1) rescaling of every log-ratio), so both are offered (:func:`chain_log_prob`).

PPO follows RLinf's embodied actor: clipped ratio with an optional dual clip, GAE with
``delta = r + gamma V(s') (1 - done) - V(s)``, a Huber value loss with value clipping, and
advantages normalized over valid entries. GRPO normalizes trajectory returns within groups of
environments reset to the same initial state and drops groups that are all success or all
failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- Gaussians
def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Per-element ``log N(x; mean, std^2)`` (no reduction)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI


def gaussian_entropy(std: Tensor) -> Tensor:
    """Per-element entropy ``0.5 * log(2 pi e std^2)`` of a Gaussian."""
    return 0.5 * (LOG_2PI + 1.0) + torch.log(std)


def bounded_std(raw: Tensor, std_min: float, std_max: float) -> Tensor:
    """A network output squashed into ``[std_min, std_max]``: ``std_min + (std_max - std_min) *
    (tanh(raw) + 1) / 2`` (Flow-Noise's noise head; the range is on the std itself)."""
    if not 0.0 < std_min <= std_max:
        raise ValueError(f"need 0 < std_min <= std_max, got [{std_min}, {std_max}]")
    return std_min + (std_max - std_min) * (torch.tanh(raw) + 1.0) / 2.0


# --------------------------------------------------------------------------- transitions
def ode_mean(x: Tensor, v: Tensor, delta: Tensor | float) -> Tensor:
    """The deterministic Euler step ``x - delta * v`` (Flow-Noise's transition mean)."""
    return x - delta * v


def flow_sde_sigma(t: Tensor | float, noise_level: float, num_steps: int) -> Tensor:
    """``sigma_t = a * sqrt(t / (1 - t'))`` with ``t' = min(t, 1 - 1/K)``: finite at ``t = 1``."""
    t = torch.as_tensor(t, dtype=torch.get_default_dtype())
    t_safe = torch.clamp(t, max=1.0 - 1.0 / num_steps) if num_steps > 1 else torch.clamp(t, max=0.5)
    return noise_level * torch.sqrt(t / (1.0 - t_safe))


def flow_sde_step(
    x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float, noise_level: float, num_steps: int
) -> tuple[Tensor, Tensor]:
    """Mean and std of one Euler-Maruyama step of the marginal-preserving SDE (downward in t):

    ``mean = x - delta * v - delta * sigma_t^2 / (2 t) * (x + (1 - t) v)``, ``std = sqrt(delta) sigma_t``.
    """
    t = torch.as_tensor(t, dtype=x.dtype)
    delta = t - torch.as_tensor(t_next, dtype=x.dtype)
    sigma = flow_sde_sigma(t, noise_level, num_steps).to(x.dtype)
    mean = x - delta * v - delta * sigma**2 / (2.0 * t) * (x + (1.0 - t) * v)
    std = torch.sqrt(delta) * sigma
    return mean, std.expand_as(mean)


def chain_log_prob(
    xs: Tensor, means: Tensor, stds: Tensor, steps: Tensor | None = None, reduce: str = "mean"
) -> Tensor:
    """Per-element log-likelihood of a denoising chain, reduced over the step axis.

    ``xs``: ``(K + 1, ...)`` with ``xs[0]`` the initial noise. Without ``steps`` every transition
    ``x_k -> x_{k+1}`` is stochastic, ``means``/``stds`` are ``(K, ...)``, and the initial
    ``N(0, I)`` term is included (Flow-Noise). With ``steps`` (a bool ``(K,)`` mask, e.g. the one
    step of Flow-SDE's hybrid rollout), ``means``/``stds`` hold only the selected transitions, in
    order, and only they count. ``reduce``: ``"mean"`` over the included terms (the reference
    code) or ``"sum"`` (the paper's product of transitions).
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if steps is None:
        initial = gaussian_log_prob(xs[0], torch.zeros_like(xs[0]), torch.ones_like(xs[0]))
        terms = torch.cat([initial[None], gaussian_log_prob(xs[1:], means, stds)])
    else:
        if not bool(steps.any()):
            raise ValueError("no stochastic step selected")
        terms = gaussian_log_prob(xs[1:][steps], means, stds)
    return terms.mean(0) if reduce == "mean" else terms.sum(0)


# --------------------------------------------------------------------------- advantages
def gae(
    rewards: Tensor, values: Tensor, next_values: Tensor, dones: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over time-major ``(T, N)`` tensors.

    ``values[t] = V(s_t)``, ``next_values[t] = V(s_{t+1})`` (the bootstrap of the last step and
    of truncated episodes), ``dones[t]`` = 1 when the episode terminated at step t (no
    bootstrap, no credit across the boundary). Returns (advantages, returns = advantages + values).
    """
    not_done = 1.0 - dones.to(values.dtype)
    deltas = rewards + gamma * next_values * not_done - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize(x: Tensor, mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``(x - mean) / (std + eps)`` over the valid entries (``mask`` True); invalid ones become 0."""
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    valid = x[mask]
    if valid.numel() == 0:
        return torch.zeros_like(x)
    mean, std = valid.mean(), valid.std(unbiased=False)
    return torch.where(mask, (x - mean) / (std + eps), torch.zeros_like(x))


def grpo_advantages(
    returns: Tensor,
    group_size: int,
    keep_range: tuple[float, float] | None = (0.1, 0.9),
    successes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Group-normalized returns ``(R - mean_g) / (std_g + 1e-6)`` for ``(N,)`` trajectory returns
    ordered in groups of ``group_size`` environments that started from the same state.

    With ``keep_range``, a group whose mean success (``successes``, default ``returns > 0``) lies
    outside it (all success or all failure) is dropped. Returns (advantages, kept mask), both
    ``(N,)``; dropped entries have advantage 0.
    """
    n = returns.shape[0]
    if group_size < 2 or n % group_size:
        raise ValueError(f"{n} returns do not split into groups of {group_size} (need group_size >= 2)")
    groups = returns.reshape(-1, group_size)
    mean = groups.mean(1, keepdim=True)
    std = groups.std(1, unbiased=False, keepdim=True)
    advantages = ((groups - mean) / (std + 1e-6)).reshape(n)
    kept = torch.ones(n, dtype=torch.bool, device=returns.device)
    if keep_range is not None:
        wins = (returns > 0 if successes is None else successes).to(returns.dtype).reshape(-1, group_size).mean(1)
        keep = (wins >= keep_range[0]) & (wins <= keep_range[1])
        kept = keep.repeat_interleave(group_size)
    return torch.where(kept, advantages, torch.zeros_like(advantages)), kept


# --------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class PolicyLoss:
    loss: Tensor  # scalar, to minimize
    clip_fraction: Tensor  # share of valid entries whose ratio was clipped
    approx_kl: Tensor  # mean of (ratio - 1) - log ratio (k3 estimator), >= 0
    ratio_mean: Tensor


def ppo_policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip: float = 0.2,
    dual_clip: float | None = None,
    mask: Tensor | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate, averaged over valid entries (token-mean); ``dual_clip`` c > 1 caps
    the loss of negative-advantage entries at ``c * |A|`` (RLinf's dual clip)."""
    if mask is None:
        mask = torch.ones_like(log_prob, dtype=torch.bool)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(advantages < 0, torch.minimum(loss, dual_clip * advantages.abs()), loss)
    m = mask.to(loss.dtype)
    count = m.sum().clamp(min=1.0)
    with torch.no_grad():
        clipped_entries = ((ratio < 1.0 - clip) | (ratio > 1.0 + clip)).to(loss.dtype)
        approx_kl = ((ratio - 1.0) - log_ratio) * m
    return PolicyLoss(
        loss=(loss * m).sum() / count,
        clip_fraction=(clipped_entries * m).sum() / count,
        approx_kl=approx_kl.sum() / count,
        ratio_mean=((ratio.detach() * m).sum() / count),
    )


def kl_penalty(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    """The k3 estimate of KL(old || new), ``mean((r - 1) - log r)`` with gradients: >= 0, zero
    where the policy has not moved (the optional KL penalty of the PPO update)."""
    log_ratio = log_prob - old_log_prob
    return (torch.exp(log_ratio) - 1.0 - log_ratio).mean()


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip: float | None = 0.2,
    huber_delta: float = 10.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Huber loss of the value head with value clipping: ``max(huber(R - V), huber(R - V_clip))``,
    ``V_clip = V_old + clip(V - V_old, -clip, clip)``, averaged over valid entries."""
    huber = torch.nn.functional.huber_loss
    loss = huber(values, returns, reduction="none", delta=huber_delta)
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, huber(clipped, returns, reduction="none", delta=huber_delta))
    if mask is None:
        return loss.mean()
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1.0)


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)`` (nan when the target is constant)."""
    var = target.var(unbiased=False)
    if var == 0:
        return float("nan")
    return float(1.0 - (target - predicted).var(unbiased=False) / var)
