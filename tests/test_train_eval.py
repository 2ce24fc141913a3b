"""train -> checkpoint -> eval on a real simulator, and resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vla import keys
from vla.datasets.chunks import ChunkSampler
from vla.evaluation.evaluate import EvalConfig, evaluate, wilson_interval
from vla.policies.config import PolicyConfig
from vla.training.trainer import TrainConfig, train

STATE_POLICY = PolicyConfig(
    vector_features=(keys.OBS_STATE, keys.OBS_ENV_STATE),
    d_model=32,
    n_heads=2,
    n_expert_layers=1,
    chunk_size=4,
    n_action_steps=2,
)


def small_train(dataset, out, **overrides) -> TrainConfig:
    values = dict(
        dataset=dataset,
        out=out,
        policy=STATE_POLICY,
        steps=20,
        batch_size=16,
        warmup_steps=5,
        log_every=5,
        save_every=10,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_train_checkpoint_eval_on_robosuite(tmp_path, lift_dataset):
    checkpoint = train(small_train(lift_dataset, tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "last").resolve() == checkpoint.resolve()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["000010", "000020", "last"]
    assert list((tmp_path / "run" / "tensorboard").iterdir()), "TensorBoard events are written"
    results = evaluate(
        EvalConfig(
            policy=checkpoint,
            env="robomimic/Lift",
            episodes=2,
            num_envs=2,
            videos=1,
            max_episode_steps=12,
            out=tmp_path / "eval",
        )
    )
    assert results["episodes"] == 2 and results["nfe"] == 1
    assert all(length == 12 for length in results["episode_lengths"]) or results["success_rate"] > 0
    assert results["latency_ms_per_chunk_call"]["p50"] > 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["success_ci95"][0] <= saved["success_rate"] <= saved["success_ci95"][1]
    assert (tmp_path / "eval" / "videos" / "episode_000.mp4").stat().st_size > 0
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0
    again = evaluate(
        EvalConfig(
            policy=checkpoint,
            env="robomimic/Lift",
            episodes=2,
            num_envs=2,
            videos=0,
            max_episode_steps=12,
            out=tmp_path / "eval2",
        )
    )
    assert again["per_episode"] == results["per_episode"], "same seeds give the same result"
    # the OSC checkpoint (7-d actions) against the joint-target controller (8-d): refused, naming the fix
    with pytest.raises(ValueError, match="7-dim actions but robomimic/Lift takes 8"):
        evaluate(
            EvalConfig(
                policy=checkpoint,
                env="robomimic/Lift",
                episodes=1,
                num_envs=1,
                videos=0,
                env_options=("controller=JOINT_TARGET",),
                out=tmp_path / "eval3",
            )
        )
    with pytest.raises(ValueError, match="key=value"):
        evaluate(
            EvalConfig(policy=checkpoint, env="robomimic/Lift", env_options=("JOINT_TARGET",), out=tmp_path / "e4")
        )


def test_resume_after_interruption_gives_the_same_weights(tmp_path, lift_dataset, monkeypatch):
    straight = train(small_train(lift_dataset, tmp_path / "straight"))
    calls = {"n": 0}
    original = ChunkSampler.sample

    def interrupt_at_step_13(self, batch_size, generator):
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt
        return original(self, batch_size, generator)

    monkeypatch.setattr(ChunkSampler, "sample", interrupt_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train(small_train(lift_dataset, tmp_path / "resumed"))
    monkeypatch.setattr(ChunkSampler, "sample", original)
    state = json.loads((tmp_path / "resumed" / "training_state" / "training_step.json").read_text())
    assert state["step"] == 13
    resumed = train(small_train(lift_dataset, tmp_path / "resumed", resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_missing_feature_and_existing_run_are_refused(tmp_path, lift_dataset):
    bad = PolicyConfig(vector_features=("observation.velocity",))
    with pytest.raises(KeyError, match="lacks feature.*observation.velocity.*it has"):
        train(small_train(lift_dataset, tmp_path / "bad", policy=bad))
    train(small_train(lift_dataset, tmp_path / "run", steps=2, save_every=2))
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_train(lift_dataset, tmp_path / "run", steps=2))


def test_wilson_interval():
    low, high = wilson_interval(95, 100)
    assert 0.88 < low < 0.89 and 0.978 < high < 0.979
    assert wilson_interval(0, 10)[0] == 0.0


def test_bench_policy_times_ours_and_lerobot_peers(tmp_path, lift_dataset, capsys):
    from vla.bench.policy_latency import BenchPolicyConfig, run_bench_policy

    checkpoint = train(small_train(lift_dataset, tmp_path / "run", steps=2, save_every=2))
    rows = run_bench_policy(
        BenchPolicyConfig(
            policies=(checkpoint,), nfe=(1, 4), peers=("diffusion_ddim10", "act"), rounds=1, calls_per_round=1, warmup=0
        )
    )
    labels = [r["policy"] for r in rows]
    assert [r["nfe"] for r in rows[:2]] == [1, 4]
    assert any("DDIM" in label for label in labels) and any("ACT" in label for label in labels)
    assert all(r["p50_ms"] > 0 for r in rows) and rows[0]["relative_to_first"] == 1.0
    assert "| lerobot ACT |" in capsys.readouterr().out
