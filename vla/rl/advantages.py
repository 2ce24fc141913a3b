"""Advantage estimators of the two RL optimizers, registered by name (``ppo``, ``grpo``).

Experience is time-major over chunk decisions: ``(T, N)`` for T decisions of N environments.
The environment runs ``k`` actions per decision; :func:`chunk_rewards` sums their rewards into
one reward per decision and takes the max of their dones (RLinf's ``reward_type: chunk_level``),
so one advantage applies to each chunk.

- ``ppo``: GAE on a critic's values, normalized over the valid decisions.
- ``grpo``: no critic; each environment's trajectory return (rewards summed until done),
  normalized within groups of ``group_size`` environments reset to the same initial state,
  groups that are all success or all failure dropped, the advantage broadcast to every decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vla.registry import Registry
from vla.rl.objectives import gae, grpo_advantages, normalize


def chunk_rewards(step_rewards: Tensor, step_dones: Tensor) -> tuple[Tensor, Tensor]:
    """``(T, N, k)`` per-action rewards and dones -> ``(T, N)`` per-decision sums and maxima."""
    if step_rewards.shape != step_dones.shape or step_rewards.dim() != 3:
        raise ValueError(
            f"need (T, N, k) rewards and dones, got {tuple(step_rewards.shape)}, {tuple(step_dones.shape)}"
        )
    return step_rewards.sum(-1), step_dones.to(torch.bool).any(-1)


def valid_mask(dones: Tensor) -> Tensor:
    """Decisions up to and including each environment's first done (later ones are after the
    episode ended, when environments are not reset automatically)."""
    ended_before = torch.cumsum(dones.to(torch.int64), 0) - dones.to(torch.int64)
    return ended_before == 0


@dataclass(frozen=True)
class AdvantageConfig:
    gamma: float = field(default=0.99, metadata={"help": "discount per chunk decision"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    group_size: int = field(default=8, metadata={"help": "GRPO: environments per group (same initial state)"})
    filter_groups: bool = field(default=True, metadata={"help": "GRPO: drop all-success / all-fail groups"})


@dataclass(frozen=True)
class Advantages:
    advantages: Tensor  # (T, N)
    returns: Tensor  # (T, N): value targets (PPO); the trajectory return (GRPO)
    mask: Tensor  # (T, N) bool: decisions that count


def ppo_advantages(
    rewards: Tensor, dones: Tensor, values: Tensor | None, next_values: Tensor | None, config: AdvantageConfig
) -> Advantages:
    if values is None or next_values is None:
        raise ValueError("ppo needs the critic's values (values and next_values)")
    advantages, returns = gae(rewards, values, next_values, dones.to(values.dtype), config.gamma, config.lam)
    mask = valid_mask(dones)
    return Advantages(normalize(advantages, mask), returns, mask)


def grpo_trajectory_advantages(
    rewards: Tensor, dones: Tensor, values: Tensor | None, next_values: Tensor | None, config: AdvantageConfig
) -> Advantages:
    mask = valid_mask(dones)
    returns = (rewards * mask).sum(0)  # (N,): each environment's first episode
    advantages, kept = grpo_advantages(
        returns, config.group_size, keep_range=(0.1, 0.9) if config.filter_groups else None
    )
    t = rewards.shape[0]
    return Advantages(advantages.expand(t, -1).clone(), returns.expand(t, -1).clone(), mask & kept.expand(t, -1))


AdvantageFn = Callable[[Tensor, Tensor, Tensor | None, Tensor | None, AdvantageConfig], Advantages]
ADVANTAGES: Registry[AdvantageFn] = Registry("RL optimizer")
ADVANTAGES.add("ppo", ppo_advantages)
ADVANTAGES.add("grpo", grpo_trajectory_advantages)
