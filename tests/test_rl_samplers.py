"""Stochastic denoising of a real (tiny) FlowPolicy for RL: Flow-Noise and Flow-SDE on both heads."""

from __future__ import annotations

import pytest
import torch

from vla import keys
from vla.policies.config import PolicyConfig
from vla.policies.flow_policy import FlowPolicy
from vla.registry import UnknownNameError
from vla.rl.objectives import ppo_policy_loss
from vla.rl.samplers import EXPLORATION, FlowNoise, FlowSDE, chain_log_prob_of, policy_step_fn, rollout

STATE, H, A = 6, 4, 3


def tiny_policy(head: str) -> FlowPolicy:
    config = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        feature_shapes={keys.OBS_STATE: [STATE]},
        action_dim=A,
        chunk_size=H,
        n_action_steps=2,
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
        head=head,
    )
    torch.manual_seed(0)
    policy = FlowPolicy(config)
    stats = {
        keys.OBS_STATE: {
            "mean": torch.zeros(STATE),
            "std": torch.ones(STATE),
            "min": -torch.ones(STATE),
            "max": torch.ones(STATE),
        },
        keys.ACTION: {"mean": torch.zeros(A), "std": torch.ones(A), "min": -torch.ones(A), "max": torch.ones(A)},
    }
    policy.set_normalization(stats)
    return policy


def scheme_for(name: str, policy: FlowPolicy):
    return FlowNoise(policy.config.d_model, A) if name == "flow-noise" else FlowSDE(noise_level=0.5)


@pytest.mark.parametrize("head", ["flow_matching", "meanflow"])
@pytest.mark.parametrize("name", ["flow-noise", "flow-sde"])
def test_recomputed_log_prob_equals_the_rollout_and_trains(head, name):
    policy = tiny_policy(head)
    scheme = scheme_for(name, policy)
    g = torch.Generator().manual_seed(1)
    obs = {keys.OBS_STATE: torch.randn(5, STATE, generator=g)}
    prefix = policy.encode_observation(policy.prepare_observation(obs))
    noise = torch.randn(5, H, A, generator=g)
    with torch.no_grad():
        ro = rollout(scheme, policy_step_fn(policy, prefix), noise, num_steps=4, generator=g)
    assert ro.xs.shape == (5, 5, H, A) and torch.isfinite(ro.log_prob).all()
    assert int(ro.stochastic.sum()) == (4 if name == "flow-noise" else 1)
    log_prob, entropy = chain_log_prob_of(scheme, policy_step_fn(policy, prefix), ro.xs, ro.stochastic)
    # the same policy gives the same likelihood: the importance ratio is 1 (no rollout/update gap)
    assert torch.equal(log_prob, ro.log_prob)
    out = ppo_policy_loss(log_prob.sum((1, 2)), ro.log_prob.sum((1, 2)), torch.randn(5, generator=g))
    assert float(out.ratio_mean) == 1.0 and float(out.clip_fraction) == 0.0
    out.loss.backward()
    grads = [p.grad for p in policy.expert_blocks.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads), "no gradient reaches the action expert"
    if name == "flow-noise":
        assert all(p.grad is not None for p in scheme.parameters()), "the noise network gets no gradient"
        assert torch.all(entropy > gaussian_floor(0.08)) and torch.all(entropy < gaussian_floor(0.16) + 1e-6)


def gaussian_floor(std: float) -> float:
    import math

    return 0.5 * math.log(2 * math.pi * math.e * std**2)


def test_flow_sde_all_steps_and_ignore_last():
    policy = tiny_policy("flow_matching")
    prefix = policy.encode_observation(policy.prepare_observation({keys.OBS_STATE: torch.zeros(2, STATE)}))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = rollout(FlowSDE(hybrid=False), policy_step_fn(policy, prefix), torch.randn(2, H, A), 4, g)
    assert bool(full.stochastic.all())
    picks = {int(torch.nonzero(FlowSDE(ignore_last=True).stochastic_steps(4, g))[0, 0]) for _ in range(200)}
    assert picks == {0, 1, 2}


def test_unknown_algorithm_names_list_what_exists():
    with pytest.raises(UnknownNameError, match="flow-noise.*flow-sde"):
        EXPLORATION.get("flow-ppo")
