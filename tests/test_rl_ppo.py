"""The PPO update of a real (tiny) FlowPolicy on recorded chains (vla/rl/ppo.py)."""

from __future__ import annotations

import pytest
import torch
from test_rl_samplers import STATE, A, H, scheme_for, tiny_policy

from vla import keys
from vla.rl.ppo import LOGPROB_LEVELS, PPOConfig, RolloutBatch, ValueHead, evaluate, executed, ppo_update
from vla.rl.samplers import policy_step_fn, rollout

N_EXEC, B = 2, 16


def collect(policy, scheme, value_head, advantages: torch.Tensor, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    obs = {keys.OBS_STATE: torch.randn(B, STATE, generator=g)}
    with torch.no_grad():
        prefix = policy.encode_observation(policy.prepare_observation(obs))
        ro = rollout(scheme, policy_step_fn(policy, prefix), torch.randn(B, H, A, generator=g), 4, g)
        batch = RolloutBatch(obs, ro.xs, ro.stochastic, ro.log_prob, advantages, torch.zeros(B), torch.zeros(B))
        _, _, values = evaluate(policy, scheme, value_head, batch, PPOConfig(), N_EXEC)
    batch.old_values, batch.returns = values, values + advantages
    return batch


def setup(name: str, head: str = "meanflow", lr: float = 0.0):
    policy = tiny_policy(head)
    scheme = scheme_for(name, policy)
    value_head = ValueHead(policy.config.d_model)
    params = [
        *policy.expert_blocks.parameters(),
        *policy.action_out.parameters(),
        *scheme.parameters(),
        *value_head.parameters(),
    ]
    return policy, scheme, value_head, torch.optim.AdamW(params, lr=lr)


@pytest.mark.parametrize("name", ["flow-noise", "flow-sde"])
@pytest.mark.parametrize("level", list(LOGPROB_LEVELS))
def test_at_learning_rate_zero_the_ratio_stays_exactly_one(name, level):
    """The reference reported a 0.064-nat rollout/update gap (clip fraction 0.05 with no learning)."""
    policy, scheme, value_head, optimizer = setup(name)
    batch = collect(policy, scheme, value_head, torch.randn(B))
    metrics = ppo_update(
        policy, scheme, value_head, batch, optimizer, PPOConfig(epochs=2, minibatch_size=8, logprob_level=level), N_EXEC
    )
    assert metrics["gradient_steps"] == 4
    assert metrics["ratio"] == 1.0 and metrics["clip_fraction"] == 0.0 and metrics["approx_kl"] == 0.0


@pytest.mark.parametrize("name", ["flow-noise", "flow-sde"])
def test_an_update_makes_good_chunks_likelier_than_bad_ones(name):
    policy, scheme, value_head, optimizer = setup(name, lr=3e-3)
    advantages = torch.tensor([1.0, -1.0] * (B // 2))
    batch = collect(policy, scheme, value_head, advantages)
    before = batch.old_log_prob[:, :N_EXEC].sum((1, 2))
    ppo_update(
        policy, scheme, value_head, batch, optimizer, PPOConfig(epochs=4, minibatch_size=B, dual_clip=None), N_EXEC
    )
    with torch.no_grad():
        after, _, _ = evaluate(policy, scheme, value_head, batch, PPOConfig(), N_EXEC)
    change = executed(after, N_EXEC, A).sum((1, 2)) - before
    assert change[advantages > 0].mean() > change[advantages < 0].mean()


def test_bad_settings_and_non_finite_losses_are_refused():
    with pytest.raises(ValueError, match="chunk, action, token"):
        PPOConfig(logprob_level="sequence")
    policy, scheme, value_head, optimizer = setup("flow-sde", lr=1e-3)
    batch = collect(policy, scheme, value_head, torch.randn(B))
    batch.returns = torch.full((B,), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite PPO loss"):
        ppo_update(policy, scheme, value_head, batch, optimizer, PPOConfig(epochs=1), N_EXEC)


@pytest.mark.parametrize("features", ["expert", "prefix"])
@pytest.mark.parametrize("detach", [True, False])
def test_the_critic_reads_the_observation_only_and_detach_keeps_its_gradient_out(features, detach):
    """Either feature choice gives a value that ignores the sampled chunk (a baseline, not a Q);
    detached, the value loss moves only the head; attached, it reaches the policy's encoder."""
    from vla.rl.ppo import critic_values

    policy = tiny_policy("flow_matching")
    value_head = ValueHead(policy.config.d_model, detach=detach, features=features)
    obs = {keys.OBS_STATE: torch.randn(B, STATE, generator=torch.Generator().manual_seed(3))}
    prefix = policy.encode_observation(policy.prepare_observation(obs))
    values = critic_values(policy, prefix, value_head, torch.randn(B, H, A), N_EXEC)
    again = critic_values(policy, prefix, value_head, torch.randn(B, H, A), N_EXEC)
    assert values.shape == (B,) and torch.equal(values, again)
    values.square().sum().backward()
    encoder_grads = [p.grad for p in policy.vector_embed.parameters()]
    assert all(g is None for g in encoder_grads) == detach
    assert all(p.grad is not None for p in value_head.parameters())
    with pytest.raises(ValueError, match="expert, prefix"):
        PPOConfig(value_features="action")
