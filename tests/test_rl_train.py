"""`vla rl` end to end on a real simulator (RoboMimic Lift, state): a short run whose metrics are
finite and whose checkpoint evaluates, GRPO's shared initial states, resume after a kill that
repeats the uninterrupted run, non-finite weights that stop the run with the last good
checkpoint kept, and refusal of a checkpoint that does not fit the environment."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla import keys
from vla.cli.rl import env_factory
from vla.evaluation.evaluate import EvalConfig, evaluate
from vla.policies.config import PolicyConfig
from vla.registry import UnknownNameError
from vla.rl.advantages import AdvantageConfig
from vla.rl.ppo import PPOConfig
from vla.rl.rollout import collect, group_seeds
from vla.rl.trainer import RLConfig, RLRun, train_rl
from vla.training.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
PER_ITERATION_METRICS = (
    "success_once",
    "success_at_end",
    "return",
    "env_steps_per_s",
    "approx_kl",
    "clip_fraction",
    "entropy",
    "noise_std",
    "loss/value",
    "grad_norm",
)


@pytest.fixture(scope="module")
def lift_sft(tmp_path_factory, lift_dataset) -> Path:
    """A tiny state policy (flow matching) trained briefly on the scripted Lift demonstrations."""
    policy = PolicyConfig(
        vector_features=(keys.OBS_STATE, keys.OBS_ENV_STATE),
        head="flow_matching",
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
        chunk_size=4,
        n_action_steps=2,
    )
    out = tmp_path_factory.mktemp("rl") / "sft"
    return train(
        TrainConfig(dataset=lift_dataset, out=out, policy=policy, steps=20, batch_size=16, warmup_steps=5, seed=0)
    )


def small_rl(policy: Path, out: Path, **overrides) -> RLConfig:
    values = dict(
        policy=policy,
        env="robomimic/Lift",
        num_envs=2,
        iterations=2,
        max_episode_steps=10,
        eval_episodes=2,
        eval_every=0,
        checkpoint_every=1,
        vectorization="sync",
        out=out,
        ppo=PPOConfig(epochs=2, minibatch_size=4),
    )
    values.update(overrides)
    return RLConfig(**values)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.parametrize(("algo", "optimizer"), [("flow-noise", "ppo"), ("flow-sde", "grpo")])
def test_short_rl_run_has_finite_metrics_and_its_checkpoint_evaluates(tmp_path, lift_sft, algo, optimizer):
    config = small_rl(
        lift_sft,
        tmp_path / "rl",
        algo=algo,
        optimizer=optimizer,
        advantage=AdvantageConfig(group_size=2, filter_groups=False),
    )
    summary = train_rl(config, env_factory(config))
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        for key in PER_ITERATION_METRICS:
            if optimizer == "grpo" and key == "loss/value":
                continue
            assert key in row and math.isfinite(row[key]), (key, row)
        assert row["env_steps"] > 0 and row["decisions_trained"] > 0
    assert summary["before"]["episodes"] == summary["after"]["episodes"] == 2
    assert summary["denoising_steps"] == 4  # flow matching: the reference's K
    assert (tmp_path / "rl" / "learning_curve.png").stat().st_size > 0
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == "iter_0002" and (checkpoint / "rl_state").is_dir()
    assert summary["best"]["iteration"] == 2  # the only evaluation after RL
    assert (tmp_path / "rl" / "checkpoints" / "best").resolve() == checkpoint
    assert weights(checkpoint).keys() == weights(lift_sft).keys()  # a normal policy checkpoint
    moved = any(not torch.equal(weights(checkpoint)[k], weights(lift_sft)[k]) for k in weights(lift_sft))
    no_signal = optimizer == "grpo" and len({r["return"] for r in rows[1:]}) == 1 and rows[1]["return"] in (0.0, 1.0)
    assert moved != no_signal  # GRPO with every episode alike has zero advantages: nothing to learn
    results = evaluate(
        EvalConfig(
            policy=checkpoint,
            env="robomimic/Lift",
            episodes=2,
            num_envs=1,
            videos=0,
            max_episode_steps=10,
            out=tmp_path,
        )
    )
    assert results["episodes"] == 2 and results["nfe"] == 4


def test_grpo_groups_start_from_the_same_state(tmp_path, lift_sft):
    config = small_rl(lift_sft, tmp_path / "rl", num_envs=4, optimizer="grpo", advantage=AdvantageConfig(group_size=2))
    run = RLRun(config)
    env = env_factory(config)(4)
    try:
        seeds = group_seeds(0, 0, 4, 2)
        experience = collect(
            run.policy, run.scheme, None, env, seeds, num_steps=4, n_exec=2, generator=torch.Generator().manual_seed(0)
        )
    finally:
        env.close()
    first = experience.observations[0][keys.OBS_ENV_STATE]
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[2], first[3])
    assert not np.array_equal(first[0], first[2])
    # the same start, different exploration noise: the chunks differ within a group
    assert not torch.equal(experience.xs[0, -1, 0], experience.xs[0, -1, 1])


def test_resume_after_kill_repeats_the_uninterrupted_run(tmp_path, lift_sft):
    iterations = 4
    reference = small_rl(lift_sft, tmp_path / "whole", iterations=iterations, checkpoint_every=2)
    train_rl(reference, env_factory(reference))
    killed = small_rl(lift_sft, tmp_path / "killed", iterations=iterations, checkpoint_every=2)
    config_path = tmp_path / "killed.json"
    from vla.cli.args import config_to_json

    config_path.write_text(config_to_json(killed))
    metrics = tmp_path / "killed" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla.cli.main", "rl", "--config", str(config_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # kill it after iteration 3, before 4
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "killed" / "checkpoints" / "last").resolve().name == "iter_0002"
    resumed = small_rl(lift_sft, tmp_path / "killed", iterations=iterations, checkpoint_every=2, resume=True)
    train_rl(resumed, env_factory(resumed))
    a = weights(tmp_path / "whole" / "checkpoints" / "last")
    b = weights(tmp_path / "killed" / "checkpoints" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in metrics.read_text().splitlines()]
    drop = ("wall_seconds", "env_steps_per_s", "rollout_seconds", "update_seconds", "eval")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]


def test_non_finite_weights_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, lift_sft, monkeypatch):
    import vla.rl.trainer as trainer

    real_update = trainer.ppo_update
    calls = []

    def update_then_corrupt(policy, *args, **kwargs):
        metrics = real_update(policy, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(policy.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(trainer, "ppo_update", update_then_corrupt)
    config = small_rl(lift_sft, tmp_path / "rl", iterations=3)
    with pytest.raises(FloatingPointError, match="last good checkpoint is .*iter_0001"):
        train_rl(config, env_factory(config))
    kept = weights(tmp_path / "rl" / "checkpoints" / "last")
    assert all(torch.isfinite(v).all() for v in kept.values())


def test_a_checkpoint_that_does_not_fit_the_env_is_refused(tmp_path, lift_sft):
    config = small_rl(lift_sft, tmp_path / "rl", env="robomimic/PickPlaceCan")
    with pytest.raises(ValueError, match=r"observation\.environment_state"):
        train_rl(config, env_factory(config))
    with pytest.raises(UnknownNameError, match="flow-noise, flow-sde"):
        small_rl(lift_sft, tmp_path / "x", algo="flow-gauss")
    with pytest.raises(UnknownNameError, match="ppo"):
        small_rl(lift_sft, tmp_path / "x", optimizer="reinforce")
    result = subprocess.run(
        [sys.executable, "-m", "vla.cli.main", "rl", "--policy", str(lift_sft), "--algo", "flow-gauss"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "flow-noise, flow-sde" in result.stderr


def test_ray_env_workers_give_the_same_run_as_the_in_process_path(tmp_path, lift_sft):
    ray = pytest.importorskip("ray")
    local = small_rl(lift_sft, tmp_path / "local", num_envs=2, iterations=2, eval_episodes=0)
    train_rl(local, env_factory(local))
    distributed = small_rl(lift_sft, tmp_path / "ray", num_envs=2, iterations=2, eval_episodes=0, ray_workers=2)
    try:
        train_rl(distributed, env_factory(distributed))
        assert len(ray.nodes()) == 1 and ray.cluster_resources()["CPU"] >= 1  # a real local instance ran it
    finally:
        ray.shutdown()
    a, b = weights(tmp_path / "local" / "checkpoints" / "last"), weights(tmp_path / "ray" / "checkpoints" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [
        [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("local", "ray")
    ]
    for r_local, r_ray in zip(*rows, strict=True):
        for key in ("env_steps", "return", "loss/policy", "approx_kl", "noise_std"):
            assert r_local.get(key) == r_ray.get(key), key


def test_data_parallel_learners_give_the_run_of_one_learner(tmp_path, lift_sft):
    """Two torch.distributed (gloo) learners in Ray actors, each on its shard of every minibatch
    (minibatches of 5 leave one learner an empty shard at the end of an epoch), reach the weights
    and metrics of the single-process update, to float rounding (the sums run in another order)."""
    ray = pytest.importorskip("ray")
    ppo = PPOConfig(epochs=2, minibatch_size=5)
    local = small_rl(lift_sft, tmp_path / "local", iterations=2, eval_episodes=0, ppo=ppo)
    train_rl(local, env_factory(local))
    parallel = small_rl(lift_sft, tmp_path / "dp", iterations=2, eval_episodes=0, ppo=ppo, learner_workers=2)
    try:
        train_rl(parallel, env_factory(parallel))
        assert len(ray.nodes()) == 1  # a real local instance ran the learners
    finally:
        ray.shutdown()
    a, b = weights(tmp_path / "local" / "checkpoints" / "last"), weights(tmp_path / "dp" / "checkpoints" / "last")
    start = weights(lift_sft)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # both learned
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    rows = [
        [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("local", "dp")
    ]
    for r_local, r_dp in zip(*rows, strict=True):
        assert r_local["env_steps"] == r_dp["env_steps"] and r_local["gradient_steps"] == r_dp["gradient_steps"]
        for key in ("loss/policy", "loss/value", "approx_kl", "grad_norm"):
            assert r_dp[key] == pytest.approx(r_local[key], rel=1e-3, abs=1e-6), key


def test_nccl_learners_without_cuda_are_refused():
    from vla.rl.distributed import learner_backend

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="nccl needs CUDA"):
        learner_backend("nccl")
    assert learner_backend("auto") == "gloo"
    with pytest.raises(ValueError, match="auto, gloo, nccl"):
        learner_backend("mpi")


def test_rl_sweep_runs_each_combination_and_reevaluates_best_on_held_out_seeds(tmp_path, lift_sft, capsys):
    from vla.bench.rl_sweep import BenchRLSweepConfig, run_bench_rl_sweep

    config = BenchRLSweepConfig(
        policy=lift_sft,
        combos=("flow-sde:ppo", "flow-sde:grpo"),
        iterations=1,
        num_envs=2,
        group_size=2,
        max_episode_steps=8,
        eval_episodes=2,
        eval_every=0,
        holdout_episodes=2,
        vectorization="sync",
        out=tmp_path / "sweep",
    )
    rows = run_bench_rl_sweep(config)
    assert [r["run"] for r in rows] == ["flow-sde_ppo", "flow-sde_grpo"]
    for r in rows:
        assert r["iterations"] == 1 and r["env_steps"] > 0
        assert 0 <= r["holdout_start"] <= 1 and 0 <= r["holdout_best"] <= 1
    assert rows[0]["holdout_start"] == rows[1]["holdout_start"]  # one start, the same held-out seeds
    assert "| flow-sde_grpo |" in capsys.readouterr().out and (tmp_path / "sweep" / "sweep.png").exists()
    metrics = tmp_path / "sweep" / "flow-sde_ppo" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    assert run_bench_rl_sweep(config) == rows  # finished runs are kept, not rerun
    assert metrics.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="exploration:optimizer"):
        run_bench_rl_sweep(BenchRLSweepConfig(policy=lift_sft, combos=("flow-sde",), out=tmp_path / "x"))


def test_bench_rl_times_rl_and_raw_stepping_of_the_same_envs(lift_sft, capsys):
    from vla.bench.rl_throughput import BenchRLConfig, run_bench_rl

    raw, rl = run_bench_rl(
        BenchRLConfig(policy=lift_sft, num_envs=2, iterations=1, max_episode_steps=8, vectorization="sync")
    )
    assert raw["env_steps"] == rl["env_steps"] == 2 * 8  # the same episodes' steps, counted alike
    assert raw["steps_per_s"] > 0 and 0 < rl["ratio_to_raw"] and 0 < rl["learner_share"] < 1
    assert "ratio" in capsys.readouterr().out
