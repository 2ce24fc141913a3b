"""Chunk-level rewards and the registered advantage estimators (vla/rl/advantages.py)."""

from __future__ import annotations

import pytest
import torch

from vla.registry import UnknownNameError
from vla.rl.advantages import ADVANTAGES, AdvantageConfig, chunk_rewards, valid_mask


def test_rewards_are_summed_per_executed_chunk_and_dones_maxed():
    rewards = torch.tensor([[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]])  # (T=2, N=1, k=3)
    dones = torch.tensor([[[0, 0, 1]], [[0, 0, 0]]])
    r, d = chunk_rewards(rewards, dones)
    assert r.tolist() == [[1.5], [0.0]] and d.tolist() == [[True], [False]]
    with pytest.raises(ValueError, match=r"\(T, N, k\)"):
        chunk_rewards(rewards[0], dones[0])


def test_decisions_after_the_first_done_do_not_count():
    dones = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    assert valid_mask(dones).tolist() == [[True, True], [True, True], [False, True], [False, False]]


def test_ppo_uses_gae_on_the_critic_and_normalizes_over_valid_decisions():
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 0.0]])
    dones = torch.tensor([[0, 1], [1, 0], [0, 0]], dtype=torch.bool)
    values, next_values = torch.zeros(3, 2), torch.zeros(3, 2)
    out = ADVANTAGES.get("ppo")(rewards, dones, values, next_values, AdvantageConfig(gamma=1.0, lam=1.0))
    assert out.mask.tolist() == [[True, True], [True, False], [False, False]]
    assert out.returns[:, 0].tolist()[:2] == [1.0, 1.0] and out.returns[0, 1] == 1.0
    valid = out.advantages[out.mask]
    assert abs(float(valid.mean())) < 1e-6 and torch.all(out.advantages[~out.mask] == 0)
    with pytest.raises(ValueError, match="critic"):
        ADVANTAGES.get("ppo")(rewards, dones, None, None, AdvantageConfig())


def test_grpo_broadcasts_group_normalized_returns_and_drops_uniform_groups():
    # 4 envs in 2 groups of 2; group 0: one success, one failure; group 1: both succeed
    rewards = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    dones = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    out = ADVANTAGES.get("grpo")(rewards, dones, None, None, AdvantageConfig(group_size=2))
    assert out.returns[0].tolist() == [1.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(out.advantages[0, :2], torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)
    assert not out.mask[:, 2:].any(), "an all-success group must not count"
    assert out.mask[:, 1].tolist() == [True, True] and out.mask[:, 0].tolist() == [True, False]


def test_unknown_optimizer_names_list_what_exists():
    with pytest.raises(UnknownNameError, match="ppo.*grpo|grpo.*ppo"):
        ADVANTAGES.get("a2c")
