"""The flow VLA policy object: both heads, inference hooks, checkpoints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla import keys
from vla.policies.checkpoint import load_policy, save_policy
from vla.policies.config import PolicyConfig
from vla.policies.flow_policy import FlowPolicy
from vla.policies.normalize import compute_stats
from vla.registry import UnknownNameError

SCENE = keys.image_key("scene")


def tiny_policy(head: str, images: bool = False, **overrides) -> FlowPolicy:
    shapes = {keys.OBS_STATE: [5]}
    if images:
        shapes[SCENE] = [32, 32, 3]
    config = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        image_features=(SCENE,) if images else (),
        feature_shapes=shapes,
        action_dim=3,
        chunk_size=4,
        n_action_steps=2,
        d_model=32,
        n_heads=2,
        n_expert_layers=2,
        head=head,
        image_tokens=4,
        **overrides,
    )
    torch.manual_seed(0)
    policy = FlowPolicy(config)
    rng = torch.Generator().manual_seed(1)
    policy.set_normalization(
        {
            keys.OBS_STATE: compute_stats(torch.randn(50, 5, generator=rng)),
            keys.ACTION: compute_stats(torch.rand(50, 3, generator=rng) * 2 - 1),
        }
    )
    return policy


def batch(n: int = 6, images: bool = False) -> dict:
    rng = np.random.default_rng(0)
    b = {
        keys.OBS_STATE: rng.normal(size=(n, 5)).astype(np.float32),
        keys.ACTION: rng.uniform(-1, 1, size=(n, 4, 3)).astype(np.float32),
        keys.TASK: ["lift"] * n,
    }
    if images:
        b[SCENE] = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    return b


def fit(policy: FlowPolicy, data: dict, steps: int = 40) -> np.ndarray:
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    history = []
    for step in range(steps):
        loss, metrics = policy(data, generator=torch.Generator().manual_seed(step % 4))
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append([metrics["loss/action"], metrics.get("loss/dispersive", 0.0)])
    return np.asarray(history)


@pytest.mark.parametrize("head", ["flow_matching", "meanflow"])
@pytest.mark.parametrize("images", [False, True])
def test_training_reduces_the_action_loss(head, images):
    history = fit(tiny_policy(head, images), batch(images=images), steps=80)
    assert history[-5:, 0].mean() < 0.8 * history[:5, 0].mean()


@pytest.mark.parametrize("head", ["flow_matching", "meanflow"])
def test_dispersive_term_spreads_the_expert_embeddings(head):
    history = fit(tiny_policy(head, dispersive_weight=0.1), batch())
    assert history[-5:, 1].mean() < history[:5, 1].mean() - 0.1


@pytest.mark.parametrize("head,nfe", [("flow_matching", 10), ("meanflow", 1)])
def test_inference_hooks(head, nfe):
    policy = tiny_policy(head).eval()
    assert policy.config.inference_steps == nfe
    obs = {k: v for k, v in batch(3).items() if k != keys.ACTION}
    noise = torch.randn(3, 4, 3)
    a = policy.predict_action_chunk(obs, noise=noise)
    assert a.shape == (3, 4, 3)
    torch.testing.assert_close(a, policy.predict_action_chunk(obs, noise=noise))  # same noise, same chunk
    calls = []
    original = policy.encode_observation
    policy.encode_observation = lambda *args, **kw: calls.append(1) or original(*args, **kw)
    chunks, features = policy.sample_action_chunks(obs, num_samples=5, return_features=True)
    assert len(calls) == 1, "the observation is encoded once for every candidate"
    assert chunks.shape == (3, 5, 4, 3) and features.shape == (3, 5, 32)
    # candidate j of sample_action_chunks equals predict_action_chunk with the same noise
    many = torch.randn(3, 5, 4, 3)
    torch.testing.assert_close(
        policy.sample_action_chunks(obs, 5, noise=many)[:, 2],
        policy.predict_action_chunk(obs, noise=many[:, 2]),
        atol=1e-5,
        rtol=1e-5,
    )
    chain = policy.denoising_chain(obs, noise=noise)
    assert chain.xs.shape == (nfe + 1, 3, 4, 3) and chain.means.shape == (nfe, 3, 4, 3)
    torch.testing.assert_close(policy.action_norm.inverse(chain.xs[-1]), a, atol=1e-5, rtol=1e-5)


def test_select_action_replans_every_n_action_steps():
    policy = tiny_policy("meanflow").eval()
    obs = {keys.OBS_STATE: np.zeros((2, 5), np.float32)}
    calls = []
    original = policy.predict_action_chunk
    policy.predict_action_chunk = lambda o, noise=None: calls.append(1) or original(o)
    actions = [policy.select_action(obs) for _ in range(5)]
    assert all(a.shape == (2, 3) for a in actions) and len(calls) == 3
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 4


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    policy = tiny_policy("flow_matching", images=True).eval()
    stats = {keys.OBS_STATE: compute_stats(torch.randn(10, 5)), keys.ACTION: compute_stats(torch.randn(10, 3))}
    policy.set_normalization(stats)
    save_policy(policy, stats, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "stats.safetensors",
    ]
    loaded = load_policy(tmp_path / "ckpt")
    obs = {k: v for k, v in batch(2, images=True).items() if k != keys.ACTION}
    noise = torch.randn(2, 4, 3)
    torch.testing.assert_close(policy.predict_action_chunk(obs, noise), loaded.predict_action_chunk(obs, noise))


def test_bad_input_is_refused_clearly():
    policy = tiny_policy("meanflow", images=True).eval()
    obs = {k: v for k, v in batch(2, images=True).items() if k != keys.ACTION}
    with pytest.raises(ValueError, match=r"must be \(B, 32, 32, 3\)"):
        policy.predict_action_chunk({**obs, SCENE: np.zeros((2, 64, 64, 3), np.uint8)})
    bad_state = obs[keys.OBS_STATE].copy()
    bad_state[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        policy.predict_action_chunk({**obs, keys.OBS_STATE: bad_state})
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        policy.predict_action_chunk({**obs, keys.OBS_STATE: np.zeros((2, 4), np.float32)})
    nan_actions = batch(2, images=True)
    nan_actions[keys.ACTION][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="action batch contains NaN"):
        policy(nan_actions)
    with pytest.raises(UnknownNameError, match="unknown action head .* Available: flow_matching, meanflow"):
        PolicyConfig(head="diffusion")
