"""`vla bench rl`: environment steps per second of RL fine-tuning against raw stepping of the
same environments, side by side in one run, and the learner's share of an iteration.

* raw: the batched environments alone, stepped with chunks of the policy's mean action (no
  policy, no learning), one seeded episode per environment per round as the RL loop runs them;
* rl: ``vla rl`` iterations (stochastic sampling, the update, the critic) on the same envs;
  its rate counts only the steps of the episodes it learns from, so the environments that keep
  stepping after their episode ended count against it.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vla.rl.trainer import RLConfig


@dataclass
class BenchRLConfig:
    policy: Path = field(default=Path("data/demo/train/checkpoints/last"), metadata={"help": "policy checkpoint"})
    env: str = field(default="robomimic/Lift", metadata={"help": "<suite>/<task>"})
    num_envs: int = field(default=8, metadata={"help": "parallel environments"})
    iterations: int = field(default=3, metadata={"help": "RL iterations (and raw rounds) to time"})
    max_episode_steps: int = field(default=80, metadata={"help": "episode limit"})
    algo: str = field(default="flow-sde", metadata={"help": "exploration scheme (vla rl's default)"})
    optimizer: str = field(default="ppo", metadata={"help": "ppo or grpo"})
    vectorization: str = field(default="auto", metadata={"help": "env batching, as in vla eval"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def _raw_stepping(config: RLConfig, rounds: int, n_exec: int) -> dict:
    from vla.cli.rl import env_factory
    from vla.policies.checkpoint import load_policy
    from vla.rl.rollout import group_seeds

    policy = load_policy(config.policy)
    mean_action = policy.action_norm.inverse(torch.zeros(1, policy.config.action_dim)).numpy()
    env = env_factory(config)(config.num_envs)
    try:
        steps, start = 0, time.perf_counter()
        for r in range(rounds):
            env.reset_episodes(group_seeds(config.seed, r, config.num_envs, 1))
            chunk = np.repeat(np.asarray(mean_action)[None], n_exec, 1).repeat(config.num_envs, 0)
            ended = np.zeros(config.num_envs, dtype=bool)
            while not ended.all():
                _, _, terminated, truncated, info = env.step(chunk)
                steps += int(np.asarray(info["steps"]).sum())
                ended |= terminated | truncated
        seconds = time.perf_counter() - start
    finally:
        env.close()
    return {
        "mode": "raw env stepping",
        "env_steps": steps,
        "seconds": round(seconds, 2),
        "steps_per_s": steps / seconds,
    }


def run_bench_rl(bench: BenchRLConfig) -> list[dict]:
    from vla.cli.rl import env_factory
    from vla.rl.trainer import train_rl

    with tempfile.TemporaryDirectory(prefix="vla-bench-rl-") as tmp:
        config = RLConfig(
            policy=bench.policy,
            env=bench.env,
            algo=bench.algo,
            optimizer=bench.optimizer,
            num_envs=bench.num_envs,
            iterations=bench.iterations,
            max_episode_steps=bench.max_episode_steps,
            eval_episodes=0,
            checkpoint_every=10**6,
            vectorization=bench.vectorization,  # type: ignore[arg-type]
            out=Path(tmp) / "rl",
        )
        train_rl(config, env_factory(config))
        rows_rl = [json.loads(line) for line in (Path(tmp) / "rl" / "metrics.jsonl").read_text().splitlines()]
        from vla.policies.config import PolicyConfig

        n_exec = PolicyConfig.load(bench.policy / "config.json").n_action_steps
        raw = _raw_stepping(replace(config, out=Path(tmp) / "raw"), bench.iterations, n_exec)
    steps = rows_rl[-1]["env_steps"]  # cumulative
    seconds = rows_rl[-1]["wall_seconds"]
    rollout = sum(r["rollout_seconds"] for r in rows_rl)
    update = sum(r["update_seconds"] for r in rows_rl)
    rl = {
        "mode": f"vla rl ({bench.algo} + {bench.optimizer})",
        "env_steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "learner_share": round(update / seconds, 3),
        "rollout_share": round(rollout / seconds, 3),
    }
    rl["ratio_to_raw"] = round(rl["steps_per_s"] / raw["steps_per_s"], 3)
    rows = [raw, rl]
    print(f"\n{bench.env}, {bench.num_envs} envs, {bench.iterations} rounds each")
    print(f"{'mode':<32} {'env steps':>10} {'s':>8} {'steps/s':>9} {'ratio':>7}")
    for row in rows:
        ratio = row.get("ratio_to_raw", 1.0)
        print(f"{row['mode']:<32} {row['env_steps']:>10} {row['seconds']:>8} {row['steps_per_s']:>9.1f} {ratio:>7.2f}")
    print(f"learner share of an RL iteration: {100 * rl['learner_share']:.0f}%")
    return rows
