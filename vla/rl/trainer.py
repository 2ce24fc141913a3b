"""`vla rl`: online RL fine-tuning of a flow policy (pi_RL) in batched simulation.

Each iteration collects one episode per environment with the stochastic sampler
(:mod:`vla.rl.rollout`), turns rewards into advantages with the chosen optimizer's estimator
(``ppo``: GAE on a critic; ``grpo``: group-normalized returns, no critic), and takes the clipped
policy-gradient update (:func:`vla.rl.ppo.ppo_update`). The deterministic sampler, the policy
as deployed, is evaluated on fixed seeds before training, every ``eval_every`` iterations and at
the end.

The environment comes from a factory the caller passes (the CLI builds it from ``sim``; Ray
builds it inside actors), so this module imports no simulator.

Output directory::

    config.json  metrics.jsonl  learning_curve.png  rl_summary.json
    checkpoints/iter_0010/  a normal policy checkpoint (vla eval / serve / the ROS node load it)
        rl_state/           exploration and critic weights, optimizer, counters (for --resume)
    checkpoints/last -> iter_XXXX
    checkpoints/best -> the iteration whose evaluation scored highest (chosen on the evaluation
                        seeds themselves, so its score is optimistic; re-evaluate on new seeds)

An iteration's randomness (its episode seeds, the sampler's noise, the minibatch order) comes
from (seed, iteration) alone, so a run resumed from a checkpoint repeats the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vla.observation import check_policy_fits_env
from vla.policies.checkpoint import load_optimizer_state, load_policy, save_optimizer_state, save_policy
from vla.rl.advantages import ADVANTAGES, AdvantageConfig
from vla.rl.ppo import PPOConfig, RolloutBatch, ValueHead, ppo_update
from vla.rl.rollout import RLEnv, collect, evaluate_deterministic, group_seeds
from vla.rl.samplers import EXPLORATION, ExplorationScheme, FlowNoise
from vla.seeding import derived_seed
from vla.threads import set_thread_budget

log = logging.getLogger(__name__)

REWARDS = ("success", "env")


@dataclass(frozen=True)
class ExplorationConfig:
    std_min: float = field(default=0.08, metadata={"help": "flow-noise: lower bound of the learned std"})
    std_max: float = field(default=0.16, metadata={"help": "flow-noise: upper bound of the learned std"})
    std_max_final: float | None = field(
        default=None, metadata={"help": "flow-noise: anneal the upper bound linearly to this (reference: 0.12)"}
    )
    noise_level: float = field(default=0.5, metadata={"help": "flow-sde: a in sigma_t = a sqrt(t / (1 - t))"})
    hybrid: bool = field(default=True, metadata={"help": "flow-sde: one random stochastic step per chunk"})
    ignore_last: bool = field(default=False, metadata={"help": "flow-sde: never draw the last step"})


@dataclass(frozen=True)
class RLConfig:
    policy: Path = field(default=Path("data/runs/train/checkpoints/last"), metadata={"help": "SFT checkpoint"})
    env: str = field(default="robomimic/Lift", metadata={"help": "<suite>/<task> (see `vla envs`)"})
    algo: str = field(
        default="flow-sde",
        metadata={"help": "exploration scheme: flow-sde or flow-noise (docs/rl.md: flow-sde measured better here)"},
    )
    optimizer: str = field(default="ppo", metadata={"help": "ppo (critic + GAE) or grpo (groups, no critic)"})
    num_envs: int = field(default=8, metadata={"help": "parallel environments (GRPO: a multiple of group_size)"})
    iterations: int = field(default=40, metadata={"help": "collect-and-update iterations"})
    denoising_steps: int | None = field(
        default=None, metadata={"help": "K of the RL chain (None: 4 for flow matching, the policy's for MeanFlow)"}
    )
    n_action_steps: int | None = field(default=None, metadata={"help": "executed actions per chunk (None: policy's)"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "episode limit (None: the task's)"})
    terminate_on_success: bool = field(default=True, metadata={"help": "an episode ends when the task is solved"})
    reward: str = field(default="success", metadata={"help": "success (1 when first solved) or env (its reward)"})
    lr: float = field(default=3e-5, metadata={"help": "policy learning rate"})
    noise_lr: float = field(default=3e-4, metadata={"help": "flow-noise noise-network learning rate"})
    value_lr: float = field(default=1e-3, metadata={"help": "value head learning rate (ppo)"})
    ppo: PPOConfig = field(default_factory=PPOConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    eval_every: int = field(default=10, metadata={"help": "iterations between evaluations (0: start and end)"})
    eval_episodes: int = field(default=50, metadata={"help": "fixed-seed episodes per evaluation"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation seeds (disjoint from training's)"})
    checkpoint_every: int = field(default=5, metadata={"help": "iterations between checkpoints"})
    max_wall_minutes: float | None = field(
        default=None, metadata={"help": "stop after the iteration that crosses this wall time (then evaluate)"}
    )
    seed: int = field(default=0, metadata={"help": "training seed"})
    out: Path = field(default=Path("data/runs/rl"), metadata={"help": "output directory"})
    resume: bool = field(default=False, metadata={"help": "continue from out/checkpoints/last"})
    vectorization: Literal["auto", "sync", "subprocess", "gpu"] = field(
        default="auto", metadata={"help": "env batching, as in vla eval"}
    )
    env_options: tuple[str, ...] = field(default=(), metadata={"help": "suite options as key=value"})
    ray_workers: int = field(default=0, metadata={"help": "env workers as Ray actors (0: no Ray)"})
    ray_address: str | None = field(
        default=None, metadata={"help": "an existing Ray cluster (None: start a local instance)"}
    )
    learner_workers: int = field(
        default=1, metadata={"help": "data-parallel learners (torch.distributed, Ray actors); 1: update in-process"}
    )
    learner_backend: str = field(default="auto", metadata={"help": "auto (gloo on CPU, nccl with CUDA), gloo or nccl"})

    def __post_init__(self) -> None:
        EXPLORATION.get(self.algo)  # unknown names list what exists
        ADVANTAGES.get(self.optimizer)
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; available: {', '.join(REWARDS)}")
        if self.num_envs < 1 or self.iterations < 0:
            raise ValueError("num_envs must be >= 1 and iterations >= 0")
        if self.learner_workers < 1:
            raise ValueError(f"learner_workers must be >= 1, got {self.learner_workers}")
        if self.optimizer == "grpo" and self.num_envs % self.advantage.group_size:
            raise ValueError(
                f"grpo: num_envs={self.num_envs} must be a multiple of advantage.group_size={self.advantage.group_size}"
            )

    @property
    def group_size(self) -> int:
        return self.advantage.group_size if self.optimizer == "grpo" else 1


def build_scheme(config: RLConfig, d_model: int, action_dim: int) -> ExplorationScheme:
    e = config.exploration
    if config.algo == "flow-noise":
        return EXPLORATION.get("flow-noise")(d_model, action_dim, std_range=(e.std_min, e.std_max))
    return EXPLORATION.get(config.algo)(noise_level=e.noise_level, hybrid=e.hybrid, ignore_last=e.ignore_last)


def rl_denoising_steps(config: RLConfig, policy) -> int:
    if config.denoising_steps:
        return config.denoising_steps
    return 4 if policy.config.head == "flow_matching" else policy.config.inference_steps


def to_batch(experience, advantages) -> RolloutBatch:
    """The decisions that count (before each environment's first done; GRPO: kept groups)."""
    t_index, n_index = torch.nonzero(advantages.mask, as_tuple=True)
    values = experience.values
    return RolloutBatch(
        observations=experience.stacked_observations(t_index, n_index),
        xs=experience.xs[t_index, :, n_index].permute(1, 0, 2, 3),
        stochastic=experience.stochastic[t_index, n_index],
        old_log_prob=experience.log_prob[t_index, n_index],
        advantages=advantages.advantages[t_index, n_index].float(),
        returns=advantages.returns[t_index, n_index].float(),
        old_values=(values[t_index, n_index] if values is not None else torch.zeros(len(t_index))),
    )


class RLRun:
    """One RL run's state: policy, exploration, critic, optimizer, counters."""

    def __init__(self, config: RLConfig):
        self.config = config
        self.policy = load_policy(config.policy)
        self.policy.train(False)  # no dropout: rollout and update see the same function
        self.num_steps = rl_denoising_steps(config, self.policy)
        self.policy.config.num_inference_steps = self.num_steps  # evaluation runs the chain RL trained
        self.n_exec = config.n_action_steps or self.policy.config.n_action_steps
        if not 1 <= self.n_exec <= self.policy.config.chunk_size:
            raise ValueError(f"n_action_steps must be in [1, {self.policy.config.chunk_size}], got {self.n_exec}")
        self.policy.config.n_action_steps = self.n_exec
        d, a = self.policy.config.d_model, self.policy.config.action_dim
        torch.manual_seed(derived_seed(config.seed, "init"))  # the new heads' weights repeat per seed
        self.scheme = build_scheme(config, d, a)
        self.value_head = (
            ValueHead(d, detach=config.ppo.value_detach, features=config.ppo.value_features)
            if config.optimizer == "ppo"
            else None
        )
        groups = [{"params": list(self.policy.parameters()), "lr": config.lr, "name": "policy"}]
        if list(self.scheme.parameters()):
            groups.append({"params": list(self.scheme.parameters()), "lr": config.noise_lr, "name": "noise"})
        if self.value_head is not None:
            groups.append({"params": list(self.value_head.parameters()), "lr": config.value_lr, "name": "value"})
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
        self.iteration = 0
        self.env_steps = 0
        self.wall_seconds = 0.0

    def check_finite(self) -> None:
        """Stop before a non-finite weight reaches a checkpoint or the simulator."""
        modules = [("policy", self.policy), ("exploration", self.scheme), ("value head", self.value_head)]
        for name, module in modules:
            if module is None:
                continue
            bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise FloatingPointError(f"non-finite {name} weights after iteration {self.iteration}: {bad[:3]}")

    def anneal(self) -> None:
        e = self.config.exploration
        if isinstance(self.scheme, FlowNoise) and e.std_max_final is not None:
            frac = self.iteration / max(self.config.iterations - 1, 1)
            self.scheme.std_range = (e.std_min, e.std_max + frac * (e.std_max_final - e.std_max))

    def state_dicts(self) -> dict[str, Any]:
        """What a learner replica needs to continue: weights, exploration, critic, optimizer."""
        state = {"policy": self.policy.state_dict(), "exploration": self.scheme.state_dict()}
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dicts(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.scheme.load_state_dict(state["exploration"])
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])

    # ----------------------------------------------------------------- checkpoints
    def save(self, out: Path) -> Path:
        directory = out / "checkpoints" / f"iter_{self.iteration:04d}"
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        stats: dict[str, dict[str, torch.Tensor]] = self.policy.stats  # type: ignore[assignment]
        save_policy(self.policy, stats, tmp, extra={"rl_iteration": self.iteration, "env": self.config.env})
        state = tmp / "rl_state"
        state.mkdir()
        save_file(_contiguous(self.scheme.state_dict()), str(state / "exploration.safetensors"))
        if self.value_head is not None:
            save_file(_contiguous(self.value_head.state_dict()), str(state / "value_head.safetensors"))
        save_optimizer_state(self.optimizer, state)
        counters: dict[str, Any] = {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "wall_seconds": self.wall_seconds,
        }
        if isinstance(self.scheme, FlowNoise):
            counters["std_range"] = list(self.scheme.std_range)
        (state / "counters.json").write_text(json.dumps(counters))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)  # atomic: a kill never leaves a half-written checkpoint
        _link(out, "last", directory)
        return directory

    def load(self, directory: Path) -> None:
        resumed = load_policy(directory)
        self.policy.load_state_dict(resumed.state_dict())
        state = directory / "rl_state"
        self.scheme.load_state_dict(load_file(str(state / "exploration.safetensors")))
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(str(state / "value_head.safetensors")))
        load_optimizer_state(self.optimizer, state)
        counters = json.loads((state / "counters.json").read_text())
        self.iteration, self.env_steps, self.wall_seconds = (
            counters["iteration"],
            counters["env_steps"],
            counters["wall_seconds"],
        )
        if isinstance(self.scheme, FlowNoise) and "std_range" in counters:
            self.scheme.std_range = tuple(counters["std_range"])


def _link(out: Path, name: str, directory: Path) -> None:
    """``checkpoints/<name>`` -> ``directory`` (``last``; ``best``: the highest evaluated success)."""
    link = out / "checkpoints" / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(directory.name)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


EnvFactory = Callable[[int], RLEnv]


class InProcessLearner:
    """The update in this process (``learner_workers=1``); the data-parallel one is
    :class:`vla.rl.distributed.DataParallelLearner`."""

    def update(self, run: RLRun, batch: RolloutBatch, generator: torch.Generator) -> dict[str, float]:
        return ppo_update(
            run.policy, run.scheme, run.value_head, batch, run.optimizer, run.config.ppo, run.n_exec, generator
        )

    def close(self) -> None:
        pass


def make_learner(run: RLRun):
    config = run.config
    if config.learner_workers == 1:
        return InProcessLearner()
    from vla.rl.distributed import DataParallelLearner

    return DataParallelLearner(run, config.learner_workers, config.ray_address, config.learner_backend)


def train_rl(config: RLConfig, make_env: EnvFactory) -> dict[str, Any]:
    """Run (or resume) RL fine-tuning; returns the summary written to ``rl_summary.json``."""
    set_thread_budget("learner")
    out = Path(config.out)
    run = RLRun(config)
    last = out / "checkpoints" / "last"
    if config.resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        run.load(last.resolve())
        log.info("resumed from %s at iteration %d", last.resolve(), run.iteration)
    elif (out / "metrics.jsonl").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    history = _read_metrics(out, before=run.iteration)
    env = make_env(config.num_envs)
    learner = None
    try:
        learner = make_learner(run)
        eval_seeds = [derived_seed(config.eval_seed, "eval", i) for i in range(config.eval_episodes)]
        first_obs = env.reset_episodes(group_seeds(config.seed, 0, config.num_envs, config.group_size))
        check_policy_fits_env(
            run.policy.observation_spec,
            run.policy.config.action_dim,
            env.spec,
            first_obs,
            config.env,
            str(config.policy),
        )
        try:
            summary = _loop(run, env, learner, out, eval_seeds, history)
        except FloatingPointError as err:
            kept = last.resolve() if last.exists() else "none yet"
            raise FloatingPointError(f"{err}; the run stopped, the last good checkpoint is {kept}") from err
    finally:
        if learner is not None:
            learner.close()
        env.close()
    return summary


def _loop(run: RLRun, env: RLEnv, learner, out: Path, eval_seeds: list[int], history: list[dict]) -> dict[str, Any]:
    config = run.config
    advantage_fn = ADVANTAGES.get(config.optimizer)
    evals = [h for h in history if "eval" in h]
    if run.iteration == 0 and config.eval_episodes:
        before = evaluate_deterministic(run.policy, env, eval_seeds, run.n_exec)
        record = {"iteration": 0, "env_steps": 0, "wall_seconds": 0.0, "eval": _eval_row(before)}
        _append_metrics(out, record)
        history.append(record)
        evals.append(record)
        log.info("before RL: success %.1f%% over %d fixed-seed episodes", 100 * before["success_once"], len(eval_seeds))
    # with a wall-time budget the iteration cap is only a bound: no total (and no absurd ETA)
    total = None if config.max_wall_minutes is not None else config.iterations
    bar = tqdm(total=total, initial=run.iteration, desc=f"rl {config.env}", unit="it")
    while run.iteration < config.iterations:
        start = time.perf_counter()
        it = run.iteration
        run.anneal()
        generator = torch.Generator().manual_seed(derived_seed(config.seed, "iteration", it))
        seeds = group_seeds(config.seed, it, config.num_envs, config.group_size)
        experience = collect(
            run.policy,
            run.scheme,
            run.value_head,
            env,
            seeds,
            num_steps=run.num_steps,
            n_exec=run.n_exec,
            generator=generator,
            reward=config.reward,
            reduce=config.ppo.logprob_reduce,
        )
        values = experience.values
        next_values = None
        if values is not None:
            next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
        advantages = advantage_fn(experience.rewards, experience.dones, values, next_values, config.advantage)
        batch = to_batch(experience, advantages)
        update_start = time.perf_counter()
        metrics: dict[str, float] = {}
        if len(batch):
            metrics = learner.update(run, batch, generator)
        update_seconds = time.perf_counter() - update_start
        run.check_finite()
        run.iteration += 1
        run.env_steps += experience.env_steps
        run.wall_seconds += time.perf_counter() - start
        episodes = experience.episodes
        record = {
            "iteration": run.iteration,
            "env_steps": run.env_steps,
            "wall_seconds": round(run.wall_seconds, 2),
            "success_once": sum(e["success_once"] for e in episodes) / len(episodes),
            "success_at_end": sum(e["success_at_end"] for e in episodes) / len(episodes),
            "return": sum(e["return"] for e in episodes) / len(episodes),
            "episode_length": sum(e["length"] for e in episodes) / len(episodes),
            "env_steps_per_s": experience.env_steps / experience.seconds,
            "rollout_seconds": round(experience.seconds, 2),
            "update_seconds": round(update_seconds, 2),
            "decisions_trained": len(batch),
            "noise_std": experience.noise_std,
            **metrics,
        }
        out_of_time = config.max_wall_minutes is not None and run.wall_seconds >= 60 * config.max_wall_minutes
        final = run.iteration == config.iterations or out_of_time
        if config.eval_episodes and (final or (config.eval_every and run.iteration % config.eval_every == 0)):
            result = _eval_row(evaluate_deterministic(run.policy, env, eval_seeds, run.n_exec))
            record["eval"] = result
            earlier = [e["eval"]["success_once"] for e in evals if e["iteration"] > 0]
            evals.append(record)
            if not earlier or result["success_once"] > max(earlier):
                _link(out, "best", run.save(out))
        if run.iteration % config.checkpoint_every == 0 or final:
            run.save(out)  # after a new best too: "last" then names this iteration again
        _append_metrics(out, record)
        history.append(record)
        bar.update(1)
        bar.set_postfix(
            success=f"{record['success_once']:.2f}",
            kl=f"{metrics.get('approx_kl', 0.0):.4f}",
            sps=f"{record['env_steps_per_s']:.0f}",
            minutes=f"{run.wall_seconds / 60:.1f}",
        )
        log.debug("iteration %s", json.dumps(record))
        if out_of_time:
            log.info("stopping at iteration %d: %.1f min of wall time used", run.iteration, run.wall_seconds / 60)
            break
    bar.close()
    if config.iterations == 0 or not (out / "checkpoints" / "last").exists():
        run.save(out)
    _plot(history, out / "learning_curve.png", config)
    summary = {
        "env": config.env,
        "algo": config.algo,
        "optimizer": config.optimizer,
        "iterations": run.iteration,
        "env_steps": run.env_steps,
        "wall_seconds": round(run.wall_seconds, 1),
        "denoising_steps": run.num_steps,
        "n_action_steps": run.n_exec,
        "before": evals[0]["eval"] if evals else None,
        "after": evals[-1]["eval"] if evals else None,
        "checkpoint": str((out / "checkpoints" / "last").resolve()),
    }
    rl_evals = [e for e in evals if e["iteration"] > 0]
    if rl_evals and (out / "checkpoints" / "best").exists():
        top = max(rl_evals, key=lambda e: e["eval"]["success_once"])  # the first of equals, as linked
        summary["best"] = {
            "iteration": top["iteration"],
            "success_once": top["eval"]["success_once"],
            "checkpoint": str((out / "checkpoints" / "best").resolve()),
        }
    (out / "rl_summary.json").write_text(json.dumps(summary, indent=2))
    if evals:
        log.info(
            "success %.1f%% -> %.1f%% (%d fixed-seed episodes), %d env steps, %.0f s",
            100 * evals[0]["eval"]["success_once"],
            100 * evals[-1]["eval"]["success_once"],
            evals[-1]["eval"]["episodes"],
            run.env_steps,
            run.wall_seconds,
        )
    return summary


def _eval_row(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("episodes", "success_once", "success_at_end", "mean_length", "seconds")}


def _append_metrics(out: Path, record: dict) -> None:
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v) and k != "explained_variance"]
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad} at iteration {record['iteration']}")
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_metrics(out: Path, before: int) -> list[dict]:
    """The metrics of iterations up to ``before`` (a resumed run drops what came after its checkpoint)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["iteration"] <= before]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _plot(history: list[dict], path: Path, config: RLConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "success_once" in h]
    evals = [h for h in history if "eval" in h]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, x_key, label in ((axes[0], "env_steps", "env steps"), (axes[1], "wall_seconds", "wall time (s)")):
        ax.plot([h[x_key] for h in train], [h["success_once"] for h in train], ".-", label="training episodes")
        ax.plot(
            [h[x_key] for h in evals], [h["eval"]["success_once"] for h in evals], "o-", label="eval (deterministic)"
        )
        ax.set_xlabel(label)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right")
    axes[2].plot([h["iteration"] for h in train], [h.get("approx_kl", 0.0) for h in train], label="approx KL")
    axes[2].plot([h["iteration"] for h in train], [h.get("clip_fraction", 0.0) for h in train], label="clip fraction")
    axes[2].set_xlabel("iteration")
    axes[2].legend()
    fig.suptitle(f"{config.env}: {config.algo} + {config.optimizer}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
