"""Experience from batched environments: one episode per environment per iteration.

The collector sees an environment only through :class:`RLEnv` (what ``sim.make_env`` returns,
or Ray's env actors), so the RL core never imports a simulator. Every iteration starts each
environment from an explicit seed (GRPO's groups share one), samples one chunk per environment
per decision with the exploration scheme, executes its first ``n_exec`` actions, and stops
once every environment's first episode has ended. Environments whose episode already ended
keep stepping (the batch moves together) but those decisions are masked out.

Success is reported two ways so a number is never ambiguous: ``success_once`` (the task was
solved at some step of the episode) and ``success_at_end`` (solved at its last step); with
``terminate_on_success`` the two agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from vla import keys
from vla.rl.ppo import ValueHead, critic_values
from vla.rl.samplers import ExplorationScheme, policy_step_fn, rollout
from vla.seeding import derived_seed


class RLEnv(Protocol):
    """The batched-environment contract the RL loop needs (``sim.vector.VectorEnv`` has it)."""

    num_envs: int
    spec: Any  # action_dim, max_episode_steps, fps

    def reset_episodes(self, seeds: Sequence[int]) -> dict[str, Any]: ...

    def step(self, actions: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def close(self) -> None: ...


def group_seeds(base: int, iteration: int, num_envs: int, group_size: int) -> list[int]:
    """Episode seeds of one iteration: ``group_size`` consecutive environments share a seed
    (group_size 1: every environment its own)."""
    if num_envs % group_size:
        raise ValueError(f"num_envs={num_envs} is not a multiple of the group size {group_size}")
    return [derived_seed(base, "train", iteration, i // group_size) for i in range(num_envs)]


@dataclass
class Experience:
    """Time-major experience of one iteration: T decisions of N environments."""

    observations: list[dict[str, Any]]  # T batches of N observations
    xs: Tensor  # (T, K + 1, N, H, A) denoising chains (normalized action space)
    stochastic: Tensor  # (T, N, K) bool
    log_prob: Tensor  # (T, N, H, A)
    values: Tensor | None  # (T, N)
    rewards: Tensor  # (T, N) per decision (summed over its executed actions)
    dones: Tensor  # (T, N) bool
    episodes: list[dict[str, Any]]  # each environment's first episode
    env_steps: int  # simulator steps of those episodes
    seconds: float
    noise_std: float  # mean std of the stochastic transitions

    def stacked_observations(self, t_index: Tensor, n_index: Tensor) -> dict[str, Any]:
        """The observations of decisions (t_index[j], n_index[j]) as one policy batch."""
        out: dict[str, Any] = {}
        for key in self.observations[0]:
            if key == keys.TASK:
                out[key] = [self.observations[t][key][n] for t, n in zip(t_index.tolist(), n_index.tolist())]
            else:
                stacked = np.stack([o[key] for o in self.observations])  # (T, N, ...)
                out[key] = torch.as_tensor(stacked[t_index.numpy(), n_index.numpy()])
        return out


def sample_chunks(policy, scheme: ExplorationScheme, obs: dict[str, Any], num_steps: int, generator, reduce: str):
    """(Rollout, prefix) of one batch of observations, without gradients."""
    with torch.no_grad():
        prefix = policy.encode_observation(policy.prepare_observation(obs))
        shape = (len(obs[keys.TASK]), policy.config.chunk_size, policy.config.action_dim)
        noise = torch.randn(shape, generator=generator)
        chain = rollout(scheme, policy_step_fn(policy, prefix), noise, num_steps, generator, reduce)
    if not torch.isfinite(chain.xs).all():
        raise FloatingPointError("the policy sampled a non-finite action chunk; nothing was sent to the simulator")
    return chain, prefix


def collect(
    policy,
    scheme: ExplorationScheme,
    value_head: ValueHead | None,
    env: RLEnv,
    seeds: Sequence[int],
    *,
    num_steps: int,
    n_exec: int,
    generator: torch.Generator,
    reward: str = "success",
    reduce: str = "mean",
) -> Experience:
    """Roll out one episode per environment with the stochastic sampler.

    ``reward``: ``success`` gives 1 for the decision in which the task is first solved (pi_RL's
    sparse reward), ``env`` the simulator's own reward summed over the executed actions."""
    start = time.perf_counter()
    n = env.num_envs
    horizon = math.ceil(env.spec.max_episode_steps / n_exec) + 1
    obs = env.reset_episodes(seeds)
    observations, xs, stochastic, log_probs, values, rewards, dones = [], [], [], [], [], [], []
    ended = np.zeros(n, dtype=bool)
    solved = np.zeros(n, dtype=bool)
    episodes: list[dict[str, Any] | None] = [None] * n
    stds = []
    for _ in range(horizon):
        chain, prefix = sample_chunks(policy, scheme, obs, num_steps, generator, reduce)
        if value_head is not None:
            with torch.no_grad():
                values.append(critic_values(policy, prefix, value_head, chain.actions, n_exec))
        actions = policy.action_norm.inverse(chain.actions)[:, :n_exec]
        observations.append(obs)
        obs, env_reward, terminated, truncated, info = env.step(actions.numpy())
        success_now = np.asarray(info["success"], dtype=bool)
        first_success = success_now & ~solved & ~ended
        r = first_success.astype(np.float32) if reward == "success" else np.asarray(env_reward, dtype=np.float32)
        solved |= success_now & ~ended
        done = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        for i, episode in enumerate(info["episode"]):
            if episode is not None and not ended[i]:
                episodes[i] = {
                    "success_once": bool(episode["success"]),
                    "success_at_end": bool(success_now[i]),
                    "return": float(episode["return"]),
                    "length": int(episode["length"]),
                    "seed": int(seeds[i]),
                }
        xs.append(chain.xs)
        stochastic.append(chain.stochastic[None].expand(n, -1))
        log_probs.append(chain.log_prob)
        rewards.append(torch.as_tensor(r))
        dones.append(torch.as_tensor(done & ~ended))
        stds.append(float(torch.exp(chain.entropy - 0.5 * math.log(2 * math.pi * math.e)).mean()))
        ended |= done
        if ended.all():
            break
    if not ended.all():
        raise RuntimeError(f"episodes did not end within {horizon} decisions; the env's time limit is missing")
    return Experience(
        observations=observations,
        xs=torch.stack(xs),
        stochastic=torch.stack(stochastic),
        log_prob=torch.stack(log_probs),
        values=torch.stack(values) if values else None,
        rewards=torch.stack(rewards),
        dones=torch.stack(dones),
        episodes=[e for e in episodes if e is not None],
        env_steps=sum(e["length"] for e in episodes if e is not None),
        seconds=time.perf_counter() - start,
        noise_std=float(np.mean(stds)),
    )


def evaluate_deterministic(policy, env: RLEnv, seeds: Sequence[int], n_exec: int) -> dict[str, Any]:
    """Success of the deterministic sampler (the policy as deployed) on fixed episode seeds,
    one episode per seed, in batches of ``env.num_envs``."""
    n = env.num_envs
    episodes: list[dict[str, Any]] = []
    start = time.perf_counter()
    torch.manual_seed(derived_seed(*seeds[:1], "eval noise"))  # the sampler's initial noise repeats too
    for first in range(0, len(seeds), n):
        batch = list(seeds[first : first + n])
        padded = batch + [batch[-1]] * (n - len(batch))
        obs = env.reset_episodes(padded)
        ended = np.zeros(n, dtype=bool)
        results: list[dict[str, Any] | None] = [None] * n
        while not ended.all():
            actions = policy.predict_action_chunk(obs)[:, :n_exec]
            obs, _, terminated, truncated, info = env.step(actions.numpy())
            for i, episode in enumerate(info["episode"]):
                if episode is not None and not ended[i]:
                    results[i] = {
                        "success_once": bool(episode["success"]),
                        "success_at_end": bool(info["success"][i]),
                        "length": int(episode["length"]),
                        "seed": int(padded[i]),
                    }
            ended |= np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        episodes += [r for r in results[: len(batch)] if r is not None]
    return {
        "episodes": len(episodes),
        "success_once": float(np.mean([e["success_once"] for e in episodes])),
        "success_at_end": float(np.mean([e["success_at_end"] for e in episodes])),
        "mean_length": float(np.mean([e["length"] for e in episodes])),
        "seconds": time.perf_counter() - start,
        "per_episode": episodes,
    }
