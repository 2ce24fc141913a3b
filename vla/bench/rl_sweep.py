"""`vla bench rl-sweep`: exploration schemes x optimizers side by side on one task, one table.

Each combination (``flow-sde:ppo``, ``flow-noise:grpo``, ...) is a ``vla rl`` run from the same
SFT checkpoint with the same budget of wall minutes, in its own directory under ``--out``; a
finished run is kept and skipped when the sweep is run again (resumable). The table reports,
per run, success on the evaluation seeds before, at its best evaluation and at the end, and
then an honest figure: the start policy and the run's ``checkpoints/best`` re-evaluated on
held-out seeds that played no part in picking ``best``. A plot overlays the runs' evaluation
curves against wall time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vla.rl.advantages import AdvantageConfig
from vla.rl.trainer import RLConfig

log = logging.getLogger(__name__)


@dataclass
class BenchRLSweepConfig:
    policy: Path = field(default=Path("data/runs/train/checkpoints/last"), metadata={"help": "SFT checkpoint"})
    env: str = field(default="robomimic/Lift", metadata={"help": "<suite>/<task>"})
    combos: tuple[str, ...] = field(
        default=("flow-sde:ppo", "flow-sde:grpo", "flow-noise:ppo", "flow-noise:grpo"),
        metadata={"help": "exploration:optimizer pairs to run"},
    )
    minutes: float = field(default=60.0, metadata={"help": "wall minutes of training per run"})
    iterations: int = field(default=10**6, metadata={"help": "iteration cap per run"})
    num_envs: int = field(default=16, metadata={"help": "parallel environments"})
    group_size: int = field(default=8, metadata={"help": "GRPO group size (num_envs must be a multiple)"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "episode limit (None: the task's)"})
    reward: str = field(default="success", metadata={"help": "success or env"})
    eval_episodes: int = field(default=100, metadata={"help": "fixed-seed episodes per evaluation"})
    eval_every: int = field(default=15, metadata={"help": "iterations between evaluations"})
    holdout_episodes: int = field(default=100, metadata={"help": "held-out episodes for start and best (0: skip)"})
    holdout_seed: int = field(default=5000, metadata={"help": "held-out seeds (disjoint from the evaluation's)"})
    env_options: tuple[str, ...] = field(default=(), metadata={"help": "suite options as key=value"})
    vectorization: str = field(default="auto", metadata={"help": "env batching, as in vla eval"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    out: Path = field(default=Path("data/runs/rl_sweep"), metadata={"help": "output directory"})


def run_configs(config: BenchRLSweepConfig) -> dict[str, RLConfig]:
    """One ``RLConfig`` per combination (unknown names are refused by RLConfig, listing what exists)."""
    runs = {}
    for combo in config.combos:
        algo, sep, optimizer = combo.partition(":")
        if not sep:
            raise ValueError(f"combo {combo!r} must be exploration:optimizer, e.g. flow-sde:ppo")
        runs[f"{algo}_{optimizer}"] = RLConfig(
            policy=config.policy,
            env=config.env,
            algo=algo,
            optimizer=optimizer,
            num_envs=config.num_envs,
            advantage=AdvantageConfig(group_size=config.group_size),
            iterations=config.iterations,
            max_episode_steps=config.max_episode_steps,
            reward=config.reward,
            eval_episodes=config.eval_episodes,
            eval_every=config.eval_every,
            checkpoint_every=5,
            max_wall_minutes=config.minutes,
            env_options=config.env_options,
            vectorization=config.vectorization,  # type: ignore[arg-type]
            seed=config.seed,
            out=config.out / f"{algo}_{optimizer}",
        )
    return runs


def _holdout(rl_config: RLConfig, checkpoint: Path | None, seeds: list[int]) -> float:
    """Deterministic success on held-out seeds: the start policy (with the RL chain's K) or a checkpoint."""
    from vla.cli.rl import env_factory
    from vla.policies.checkpoint import load_policy
    from vla.rl.rollout import evaluate_deterministic
    from vla.rl.trainer import RLRun

    if checkpoint is None:
        run = RLRun(rl_config)  # the start policy exactly as the run evaluated it
        policy, n_exec = run.policy, run.n_exec
    else:
        policy = load_policy(checkpoint)
        n_exec = policy.config.n_action_steps
    policy.train(False)
    env = env_factory(rl_config)(rl_config.num_envs)
    try:
        return float(evaluate_deterministic(policy, env, seeds, n_exec)["success_once"])
    finally:
        env.close()


def run_bench_rl_sweep(config: BenchRLSweepConfig) -> list[dict[str, Any]]:
    from vla.cli.rl import run_rl
    from vla.seeding import derived_seed

    runs = run_configs(config)
    config.out.mkdir(parents=True, exist_ok=True)
    seeds = [derived_seed(config.holdout_seed, "eval", i) for i in range(config.holdout_episodes)]
    rows: list[dict[str, Any]] = []
    start_holdout: float | None = None
    for name, rl_config in runs.items():
        summary_path = rl_config.out / "rl_summary.json"
        if summary_path.exists():
            log.info("%s: finished earlier, kept", name)
            summary = json.loads(summary_path.read_text())
        else:
            resume = (rl_config.out / "checkpoints" / "last").exists()
            summary = run_rl(replace(rl_config, resume=resume))
        row: dict[str, Any] = {
            "run": name,
            "before": summary["before"]["success_once"] if summary.get("before") else None,
            "best": summary.get("best", {}).get("success_once"),
            "best_iteration": summary.get("best", {}).get("iteration"),
            "after": summary["after"]["success_once"] if summary.get("after") else None,
            "iterations": summary["iterations"],
            "env_steps": summary["env_steps"],
            "wall_minutes": round(summary["wall_seconds"] / 60, 1),
        }
        if seeds and "best" in summary:
            holdout_path = rl_config.out / "holdout.json"
            if holdout_path.exists():
                held = json.loads(holdout_path.read_text())
            else:
                if start_holdout is None:
                    start_holdout = _holdout(rl_config, None, seeds)
                held = {
                    "episodes": len(seeds),
                    "start": start_holdout,
                    "best": _holdout(rl_config, Path(summary["best"]["checkpoint"]), seeds),
                }
                holdout_path.write_text(json.dumps(held, indent=2))
            start_holdout = held["start"]
            row["holdout_start"], row["holdout_best"] = held["start"], held["best"]
        rows.append(row)
        _write(config, rows)
    _plot(config, runs)
    print(_table(config, rows))
    return rows


def _table(config: BenchRLSweepConfig, rows: list[dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = [
        f"{config.env}, {config.minutes:g} min per run, {config.num_envs} envs, "
        f"{config.eval_episodes} evaluation episodes, {config.holdout_episodes} held-out",
        "| run | before | best (iteration) | at the end | held-out: start -> best | iterations | env steps | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        held = f"{pct(r.get('holdout_start'))} -> {pct(r.get('holdout_best'))}" if "holdout_best" in r else "-"
        lines.append(
            f"| {r['run']} | {pct(r['before'])} | {pct(r['best'])} ({r['best_iteration']}) | {pct(r['after'])} | "
            f"{held} | {r['iterations']} | {r['env_steps']} | {r['wall_minutes']} |"
        )
    return "\n".join(lines)


def _write(config: BenchRLSweepConfig, rows: list[dict[str, Any]]) -> None:
    (config.out / "sweep.json").write_text(json.dumps(rows, indent=2))
    (config.out / "sweep.md").write_text(_table(config, rows) + "\n")


def _plot(config: BenchRLSweepConfig, runs: dict[str, RLConfig]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rl_config in runs.items():
        path = rl_config.out / "metrics.jsonl"
        if not path.exists():
            continue
        evals = [r for r in map(json.loads, path.read_text().splitlines()) if "eval" in r]
        ax.plot([r["wall_seconds"] / 60 for r in evals], [r["eval"]["success_once"] for r in evals], "o-", label=name)
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("success (deterministic, evaluation seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(config.env)
    ax.legend()
    fig.tight_layout()
    fig.savefig(config.out / "sweep.png", dpi=100)
    plt.close(fig)
