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


def close_actors(actors: Sequence[Any]) -> None:
    """Let each actor close what it holds, then end it (even when its close fails)."""
    import ray

    for actor in actors:
        try:
            ray.get(actor.close.remote())
        finally:
            ray.kill(actor)


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
        close_actors(self._workers)
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


# ---------------------------------------------------------------- data-parallel learner
class TorchDistributedSync:
    """The :class:`vla.rl.ppo.GradientSync` of one data-parallel learner: a strided shard of
    each minibatch, gradients and metrics summed over the process group after weighting by the
    shard's share (so the sum is the whole minibatch's mean, as one learner computes it)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def shard(self, index):
        return index[self.rank :: self.world_size]

    def reduce_gradients(self, params, share: float) -> None:
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]) * share  # one all-reduce per step
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def reduce_metrics(self, values, share: float):
        import torch.distributed as dist

        values = values * share
        dist.all_reduce(values)
        return values


def learner_backend(requested: str) -> str:
    """gloo on CPU, NCCL where CUDA is present; an explicit NCCL without CUDA is refused, never
    quietly swapped for gloo."""
    import torch

    if requested not in ("auto", "gloo", "nccl"):
        raise ValueError(f"unknown learner backend {requested!r}; available: auto, gloo, nccl")
    if requested == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("learner backend nccl needs CUDA on the learners; none is visible (use gloo)")
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return requested


class _Learner:
    """The body of one learner actor: a replica of the run's policy, exploration, critic and
    optimizer, in a torch.distributed process group with the other learners."""

    def __init__(self, run_class: type, config, rank: int, world_size: int, threads: int):
        from vla.threads import set_thread_budget

        set_thread_budget("learner", threads)
        self.rank, self.world_size = rank, world_size
        self.run = run_class(config)  # the driver's RLRun class (passed, not imported: no cycle)
        self.sync = TorchDistributedSync(rank, world_size)

    def endpoint(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group: this node's address and a free port."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, address: str, port: int, backend: str, state: dict[str, Any]) -> None:
        import torch.distributed as dist

        dist.init_process_group(
            backend, init_method=f"tcp://{address}:{port}", rank=self.rank, world_size=self.world_size
        )
        self.run.load_state_dicts(state)

    def update(self, batch, generator_state):
        import torch

        from vla.rl.ppo import ppo_update

        run = self.run
        generator = torch.Generator()
        generator.set_state(generator_state)
        config = run.config
        metrics = ppo_update(
            run.policy, run.scheme, run.value_head, batch, run.optimizer, config.ppo, run.n_exec, generator, self.sync
        )
        if self.rank:
            return None  # the replicas are identical; rank 0 answers for all
        return metrics, run.state_dicts(), generator.get_state()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class DataParallelLearner:
    """The learner side of the actor/learner split: ``world_size`` Ray actors that run each PPO
    update data-parallel with torch.distributed (gloo on CPU, NCCL on GPU).

    The driver keeps a mirror of the learners' state (weights, exploration, critic and optimizer
    moments) after every update: its policy runs the next rollout, and checkpoints and
    ``--resume`` stay those of the single-process run. That costs one state transfer per
    iteration, small for the policies trained here; a billion-parameter policy would want the
    learners to checkpoint themselves (not built). On a cluster, every learner loads the SFT
    checkpoint from the same path, so it must be on storage all nodes see."""

    def __init__(self, run, world_size: int, address: str | None, backend: str = "auto"):
        import ray

        from vla.threads import thread_budget

        if world_size < 2:
            raise ValueError(f"a data-parallel learner needs at least 2 learners, got {world_size}")
        init_ray(address)
        backend = learner_backend(backend)
        # Learners and env actors take turns (rollout, then update), so learners reserve no
        # CPU slot of their own; on GPU each takes a device.
        options = {"num_cpus": 0, "num_gpus": 1 if backend == "nccl" else 0}
        threads = max(1, thread_budget("learner") // world_size)
        actor = ray.remote(_Learner).options(**options)
        self._ray = ray
        self.workers: list[Any] = [
            actor.remote(type(run), run.config, rank, world_size, threads) for rank in range(world_size)
        ]
        address_0, port = ray.get(self.workers[0].endpoint.remote())
        state = run.state_dicts()
        ray.get([w.join.remote(address_0, port, backend, state) for w in self.workers])
        self.backend = backend

    def update(self, run, batch, generator) -> dict[str, float]:
        """One PPO update on all learners; the driver's ``run`` and ``generator`` then mirror them."""
        results = self._ray.get([w.update.remote(batch, generator.get_state()) for w in self.workers])
        metrics, state, generator_state = results[0]
        run.load_state_dicts(state)
        generator.set_state(generator_state)
        return metrics

    def close(self) -> None:
        close_actors(self.workers)
        self.workers = []
