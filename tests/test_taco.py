"""TACO: the Coin Flipping Network counts, selection, save/load binding, the shared-encoding
sampler, and `vla verifier fit` -> `vla eval --verifier taco` on a real simulator."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from vla import keys
from vla.policies.config import PolicyConfig
from vla.policies.flow_policy import FlowPolicy
from vla.verifiers.cfn import CFNConfig, pseudo_counts, select_highest_count
from vla.verifiers.taco import TacoFitConfig, TacoPolicy, TacoVerifier, noise_bank, train_cfn


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_cfn_pseudo_counts_rank_states_by_how_often_they_were_seen():
    rng = np.random.default_rng(0)
    levels = [1, 4, 16, 64]
    points = rng.normal(size=(len(levels) * 3, 8)).astype(np.float32)
    visits = np.repeat(levels, 3)
    data = torch.from_numpy(np.repeat(points, visits, axis=0))
    config = TacoFitConfig(epochs=200, batch_size=256, lr=3e-3, cfn=CFNConfig(hidden_dim=64, num_blocks=1))
    network = train_cfn(data, config)
    with torch.no_grad():
        counts = pseudo_counts(network(torch.from_numpy(points))).numpy()
        unseen = pseudo_counts(network(torch.from_numpy(rng.normal(size=(20, 8)).astype(np.float32)) * 3)).numpy()
    assert _spearman(counts, visits) > 0.8, (counts, visits)
    per_level = [np.median(counts[visits == n]) for n in levels]
    assert per_level == sorted(per_level), per_level
    assert np.median(unseen) < per_level[-1]


def test_selection_picks_the_highest_count_and_breaks_ties_at_random():
    counts = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.5, 0.1], [2.0, 7.0, 7.0]])
    picks = {tuple(select_highest_count(counts, torch.Generator().manual_seed(s)).tolist()) for s in range(40)}
    assert {p[:2] for p in picks} == {(1, 0)}
    assert {p[2] for p in picks} == {1, 2}, "a tie goes either way"
    with pytest.raises(ValueError, match="NaN"):
        select_highest_count(torch.tensor([[1.0, float("nan")]]))


def _policy(seed: int = 0) -> FlowPolicy:
    torch.manual_seed(seed)
    config = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        feature_shapes={keys.OBS_STATE: [5]},
        action_dim=3,
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
        chunk_size=4,
        n_action_steps=2,
        head="flow_matching",
        num_inference_steps=3,
    )
    return FlowPolicy(config).eval()


def _obs(batch: int = 2) -> dict:
    return {keys.OBS_STATE: np.random.default_rng(1).normal(size=(batch, 5)).astype(np.float32)}


def _verifier(policy: FlowPolicy) -> TacoVerifier:
    obs = _obs(8)
    _, features = policy.sample_action_chunks(obs, 4, return_features=True)
    network = train_cfn(features.reshape(-1, features.shape[-1]), TacoFitConfig(epochs=2, cfn=CFNConfig(hidden_dim=16)))
    return TacoVerifier(network, "abc")


def test_shared_encoding_gives_the_candidates_of_one_pass_per_candidate():
    policy, obs = _policy(), _obs()
    bank = noise_bank(5, 4, 3)
    noise = bank[None].expand(2, *bank.shape)
    shared = policy.sample_action_chunks(obs, 5, noise=noise)
    for i in range(5):
        alone = policy.predict_action_chunk(obs, noise=noise[:, i])
        torch.testing.assert_close(shared[:, i], alone, atol=1e-5, rtol=1e-5)


def test_one_candidate_with_taco_is_the_plain_policy_bit_for_bit():
    policy, obs = _policy(), _obs()
    taco = TacoPolicy(policy, _verifier(policy), num_samples=1)
    plain = policy.predict_action_chunk(obs, noise=noise_bank(1, 4, 3)[0][None].expand(2, 4, 3))
    assert torch.equal(taco.predict_action_chunk(obs), plain)
    with pytest.raises(ValueError, match=">= 1"):
        TacoPolicy(policy, taco.verifier, num_samples=0)


def test_taco_executes_the_candidate_with_the_highest_count():
    policy, obs = _policy(), _obs()
    taco = TacoPolicy(policy, _verifier(policy), num_samples=6)
    chosen = taco.predict_action_chunk(obs)
    bank = noise_bank(6, 4, 3)
    chunks, features = policy.sample_action_chunks(
        obs, 6, noise=bank[None].expand(2, *bank.shape), return_features=True
    )
    counts = taco.verifier.counts(features)
    assert torch.equal(taco.last_choice, counts.argmax(1))
    torch.testing.assert_close(chosen, chunks[torch.arange(2), counts.argmax(1)])


def test_ood_flag_fires_far_more_on_features_unlike_the_training_data():
    # a CFN tells frequent from rare: the training states come from one dense region (like the
    # frames of many demonstrations of one task); held-out frames from the same region calibrate
    rng = np.random.default_rng(0)
    seen = torch.from_numpy((rng.normal(size=(1200, 8)) * 0.3).astype(np.float32))
    network = train_cfn(seen[:1000], TacoFitConfig(epochs=30, batch_size=128, cfn=CFNConfig(hidden_dim=64)))
    verifier = TacoVerifier(network, "abc")
    held = seen[1000:]
    threshold = float(torch.quantile(verifier.counts(held), 0.05))
    verifier.ood = {"threshold": threshold, "false_alarm_rate": 0.05, "heldout_frames": len(held)}
    held_rate = verifier.out_of_distribution(verifier.counts(held)).float().mean()
    shifted = verifier.out_of_distribution(verifier.counts(held + 3)).float().mean()
    assert held_rate <= 0.06 and shifted > 0.5, (held_rate, shifted)
    assert not TacoVerifier(network, "abc").out_of_distribution(torch.zeros(3)).any(), "uncalibrated: no flags"


def test_verifier_save_load_scores_identically_and_refuses_bad_input(tmp_path):
    policy = _policy()
    verifier = _verifier(policy)
    features = torch.randn(3, 7, policy.config.d_model)
    verifier.save(tmp_path / "v")
    from vla.verifiers.taco import load_taco

    with pytest.raises(FileNotFoundError, match="vla verifier fit"):
        load_taco(tmp_path, tmp_path / "missing")
    (tmp_path / "model.safetensors").write_bytes(b"other weights")  # a checkpoint whose weights differ
    with pytest.raises(ValueError, match="fitted to another policy"):
        load_taco(tmp_path, tmp_path / "v")
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    from vla.verifiers.taco import policy_fingerprint

    config["policy_fingerprint"] = policy_fingerprint(tmp_path)
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    loaded = load_taco(tmp_path, tmp_path / "v")
    assert torch.equal(loaded.counts(features), verifier.counts(features))
    with pytest.raises(ValueError, match="NaN"):
        loaded.counts(torch.full((1, 2, policy.config.d_model), float("nan")))
    with pytest.raises(ValueError, match="scores 32-d features"):
        loaded.counts(torch.randn(1, 2, 7))


def test_fit_then_eval_with_taco_on_robosuite(tmp_path, lift_dataset):
    from vla.evaluation.evaluate import EvalConfig, evaluate
    from vla.training.trainer import TrainConfig, train
    from vla.verifiers.taco import fit_taco

    state_policy = PolicyConfig(
        vector_features=(keys.OBS_STATE, keys.OBS_ENV_STATE), d_model=32, n_heads=2, n_expert_layers=1, chunk_size=4
    )
    checkpoint = train(TrainConfig(dataset=lift_dataset, out=tmp_path / "run", policy=state_policy, steps=10))
    out = fit_taco(
        TacoFitConfig(
            policy=checkpoint,
            dataset=lift_dataset,
            num_candidates=4,
            epochs=2,
            max_frames=48,
            cfn=CFNConfig(hidden_dim=32),
        )
    )
    assert out == checkpoint.resolve() / "verifier_taco" and (out / "model.safetensors").is_file()
    fit = json.loads((out / "fit.json").read_text())
    assert fit["frames"] == 48 and 0 < fit["heldout_frames"] < 48 and fit["ood"]["threshold"] > 0
    from vla.bench.taco_latency import BenchTacoConfig, run_bench_taco

    rows = run_bench_taco(BenchTacoConfig(policy=checkpoint, num_samples=(1, 4), warmup=1, rounds=2))
    assert [r["num_samples"] for r in rows] == [1, 4] and rows[0]["shared_vs_n1"] == 1.0
    assert all(r["shared_ms"] > 0 and r["naive_ms"] > 0 for r in rows)
    base = EvalConfig(policy=checkpoint, env="robomimic/Lift", episodes=2, num_envs=1, videos=0, max_episode_steps=8)
    results = evaluate(replace(base, verifier="taco", num_samples=4, out=tmp_path / "eval"))
    assert results["verifier"] == "taco" and results["num_samples"] == 4 and results["episodes"] == 2
    assert 0.0 <= results["ood_rate"] <= 1.0
    other = train(TrainConfig(dataset=lift_dataset, out=tmp_path / "run2", policy=state_policy, steps=10, seed=1))
    (other.resolve() / "verifier_taco").symlink_to(out, target_is_directory=True)
    with pytest.raises(ValueError, match="fitted to another policy"):
        evaluate(replace(base, policy=other, verifier="taco", out=tmp_path / "eval2"))
