"""Environment workers as Ray actors: the rollout side of pi_RL's actor/learner split.

``RayVectorEnv`` has the batched-environment contract the RL loop uses (``reset_episodes``,
``step``, ``spec``, ``num_envs``), so ``vla rl --ray-workers W`` runs the same loop: each of
the W actors builds its share of the environments with the factory the caller passes and steps
them where Ray placed it (another core here, another machine on a cluster). Seeds travel with
each reset, so a run gives the same numbers as the in-process path for the same seed.

Pointing it at a cluster: start Ray on the machines (``ray start --head`` on one,
``ray start --address <head>:6379`` on the others, each with this repository installed the
way the set-up installs it), then ``vla rl --ray-address <head>:6379 --ray-workers W``.
Without ``--ray-address`` a local instance is started with this machine's cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.threads import cpu_count, thread_budget


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` cut into ``parts`` consecutive runs whose lengths differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


def merge_batches(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-worker observation or info dicts along the environment axis."""
    merged: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], np.ndarray):
            merged[key] = np.concatenate(values)
        else:
            merged[key] = [v for value in values for v in value]
    return merged


class _EnvWorker:
    """The body of a Ray actor: a batch of environments built on the actor's node."""

    def __init__(self, make_env: Callable[[int], Any], num_envs: int):
        self.env = make_env(num_envs)

    def spec(self):
        return self.env.spec

    def reset_episodes(self, seeds):
        return self.env.reset_episodes(seeds)

    def step(self, actions):
        return self.env.step(actions)

    def close(self):
        self.env.close()


class RayVectorEnv:
    def __init__(self, make_env: Callable[[int], Any], num_envs: int, num_workers: int):
        import ray

        if not 1 <= num_workers <= num_envs:
            raise ValueError(f"ray workers must be in [1, num_envs={num_envs}], got {num_workers}")
        self.num_envs = num_envs
        self._sizes = [len(part) for part in split_evenly(range(num_envs), num_workers)]
        actor = ray.remote(num_cpus=1)(_EnvWorker)
        self._workers: list[Any] = [actor.remote(make_env, size) for size in self._sizes]
        self._ray = ray
        self.spec = ray.get(self._workers[0].spec.remote())

    def reset_episodes(self, seeds: Sequence[int]) -> dict[str, Any]:
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        parts = split_evenly(list(seeds), len(self._workers))
        return merge_batches(self._ray.get([w.reset_episodes.remote(p) for w, p in zip(self._workers, parts)]))

    def step(self, actions: Any):
        actions = np.asarray(actions)
        bounds = np.cumsum([0, *self._sizes])
        futures = [w.step.remote(actions[a:b]) for w, a, b in zip(self._workers, bounds[:-1], bounds[1:])]
        results = self._ray.get(futures)
        obs = merge_batches([r[0] for r in results])
        reward, terminated, truncated = (np.concatenate([r[i] for r in results]) for i in (1, 2, 3))
        info = merge_batches([r[4] for r in results])
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        for worker in self._workers:
            try:
                self._ray.get(worker.close.remote())
            finally:
                self._ray.kill(worker)
        self._workers = []


def init_ray(address: str | None) -> None:
    """Connect to a cluster at ``address``, or start a local instance with this machine's cores.
    Workers import this repository, so its root goes on their PYTHONPATH."""
    import ray

    if ray.is_initialized():
        return
    repo_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    # one thread per simulator actor (the env_worker role of vla/threads.py)
    budget = str(thread_budget("env_worker"))
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": budget, "MKL_NUM_THREADS": budget}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)


def ray_env_factory(make_env: Callable[[int], Any], num_workers: int, address: str | None):
    """An env factory for the RL loop whose environments live in ``num_workers`` Ray actors."""

    def factory(num_envs: int) -> RayVectorEnv:
        init_ray(address)
        return RayVectorEnv(make_env, num_envs, num_workers)

    return factory
