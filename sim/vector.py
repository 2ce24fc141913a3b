"""Batched environments: many ``EpisodeRunner``s behind one batched API.

``SyncVectorEnv`` steps them in this process (cheapest for one env); ``SubprocVectorEnv``
spreads them over worker processes, one per core by default, each stepping its share of
single-env simulators in turn (MuJoCo is single-threaded, and ManiSkill refuses num_envs > 1
on its CPU backend), so stepping scales with the cores available. Both return:

    obs     {key: (B, ...)} with ``task`` a list of B strings
    reward  (B,) float32, summed over the executed part of each chunk
    terminated, truncated  (B,) bool
    info    {"success": (B,) bool, "steps": (B,) int, "final_observation": [obs | None] * B,
             "episode": [stats | None] * B}
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from sim.core import EnvConfig, EnvSpec, EpisodeRunner, validate_actions
from vla import keys
from vla.rl.distributed import split_evenly
from vla.threads import cpu_count, thread_budget


def stack_observations(observations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = observations[0]
    batch: dict[str, Any] = {}
    for key in first:
        if key == keys.TASK:
            batch[key] = [o[key] for o in observations]
        else:
            batch[key] = np.stack([o[key] for o in observations])
    return batch


def _merge_step_results(results: Sequence[tuple]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, dict]:
    obs = stack_observations([r[0] for r in results])
    reward = np.array([r[1] for r in results], dtype=np.float32)
    terminated = np.array([r[2] for r in results], dtype=bool)
    truncated = np.array([r[3] for r in results], dtype=bool)
    infos = [r[4] for r in results]
    info = {
        "success": np.array([i["success"] for i in infos], dtype=bool),
        "steps": np.array([i["steps"] for i in infos], dtype=np.int64),
        "episode_seed": np.array([i["episode_seed"] for i in infos], dtype=np.int64),
        "final_observation": [i.get("final_observation") for i in infos],
        "episode": [i.get("episode") for i in infos],
    }
    return obs, reward, terminated, truncated, info


class VectorEnv:
    """Common front of the batched envs: validation and the batched result format."""

    spec: EnvSpec
    num_envs: int

    def step(self, actions: Any):
        """Step every env with one action ``(B, A)`` or a chunk ``(B, H, A)``."""
        chunk = validate_actions(actions, self.num_envs, self.spec.action_dim)
        return _merge_step_results(self._step(chunk))

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        return stack_observations(self._call_all("reset", [(seed,)] * self.num_envs))

    def reset_episodes(self, seeds: Sequence[int]) -> dict[str, Any]:
        """Start one episode per env from the given simulator seeds (equal seeds, equal states)."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        return stack_observations(self._call_all("reset_episode", [(int(s),) for s in seeds]))

    def expert_actions(self) -> np.ndarray:
        """One action per env from the task's scripted expert, run next to each simulator."""
        return np.stack(self._call_all("expert_action", [()] * self.num_envs)).astype(np.float32)

    def render(self, camera: str) -> np.ndarray:
        """(B, H, W, 3) uint8 frames from a named camera, in any obs mode."""
        return np.stack(self._call_all("render", [(camera,)] * self.num_envs))

    def _step(self, chunk: np.ndarray) -> list[tuple]:
        return self._call_all("step_chunk", [(c,) for c in chunk])

    def _call_all(self, method: str, args: Sequence[tuple]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Worker:
    """What each env index holds: a runner and, on demand, its scripted expert."""

    def __init__(self, config: EnvConfig, env_index: int):
        from sim.registry import build_single_env

        self.runner = EpisodeRunner(build_single_env(config), config, env_index)
        self.expert = None
        self._expert_episode = -1

    def reset(self, seed):
        return self.runner.reset(seed)

    def reset_episode(self, seed):
        return self.runner.reset_episode(seed)

    def step_chunk(self, chunk):
        return self.runner.step_chunk(chunk)

    def expert_action(self):
        from sim.experts import make_expert

        if self.expert is None:
            self.expert = make_expert(self.runner.env.spec.name)
        if self._expert_episode != self.runner.episode_index:
            self.expert.reset(self.runner.env)
            self._expert_episode = self.runner.episode_index
        return self.expert.act(self.runner.env)

    def render(self, camera):
        return self.runner.env.render(camera)

    def spec(self):
        return self.runner.env.spec

    def close(self):
        self.runner.env.close()


class SyncVectorEnv(VectorEnv):
    def __init__(self, configs: Sequence[EnvConfig]):
        self.workers = [_Worker(c, i) for i, c in enumerate(configs)]
        self.num_envs = len(self.workers)
        self.spec = self.workers[0].spec()

    def _call_all(self, method, args):
        return [getattr(w, method)(*a) for w, a in zip(self.workers, args, strict=True)]

    def close(self):
        for w in self.workers:
            w.close()
        self.workers = []


def _worker_main(conn: Connection, config: EnvConfig, env_indices: Sequence[int]) -> None:
    """Serve a group of envs: each command carries one argument tuple per env of the group and
    is answered with one result per env (stepped one after the other, in this process)."""
    try:
        workers = [_Worker(config, i) for i in env_indices]
        conn.send(("ok", [w.spec() for w in workers]))
    except BaseException:  # report construction errors to the parent instead of dying silently
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if method == "close":
            for worker in workers:
                worker.close()
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", [getattr(w, method)(*a) for w, a in zip(workers, args, strict=True)]))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _worker_entry() -> None:
    """``python -c WORKER_ENTRY <fd>``: serve a group of envs over the inherited socket."""
    fd = int(sys.argv[1])
    conn = Connection(fd)
    config, env_indices = conn.recv()
    _worker_main(conn, config, env_indices)


# not ``-m sim.vector``: the package imports this module first, and runpy then warns per worker
WORKER_ENTRY = "from sim.vector import _worker_entry; _worker_entry()"


def default_workers(num_envs: int) -> int:
    """One simulator process per core: more processes than cores only take turns on them, and
    each robosuite process holds ~0.8 GB (32 of them filled this 24 GB machine)."""
    return max(1, min(num_envs, cpu_count()))


class SubprocVectorEnv(VectorEnv):
    """Simulators in worker processes, commands over a socket pair; each of ``workers``
    processes (default: one per core) steps its consecutive share of the envs in turn.

    Workers are fresh interpreters (not forks), so each has its own rendering context and
    no torch/OpenGL state is shared. A suite may ask for another interpreter (a sidecar
    venv, e.g. robosuite 1.5 for the RoboMimic tasks robosuite 1.4 lacks) through
    ``worker_python``; the wire format is plain pickled numpy, so both sides only need numpy.
    """

    def __init__(self, configs: Sequence[EnvConfig], python: str | None = None, workers: int | None = None):
        repo_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # one simulator per core: a worker's torch/OpenMP thread pool would only fight the others
        # (the env_worker role's budget, vla/threads.py; VLA_THREADS_ENV_WORKER overrides it)
        budget = str(thread_budget("env_worker"))
        env.update(OMP_NUM_THREADS=budget, MKL_NUM_THREADS=budget)
        self.num_envs = len(configs)
        workers = default_workers(self.num_envs) if workers is None else workers
        if not 1 <= workers <= self.num_envs:
            raise ValueError(f"workers must be in [1, num_envs={self.num_envs}], got {workers}")
        self.groups = split_evenly(range(self.num_envs), workers)
        self.conns: list[Connection] = []
        self.procs: list[subprocess.Popen] = []
        for group in self.groups:
            parent_sock, child_sock = socket.socketpair()
            proc = subprocess.Popen(
                [python or sys.executable, "-c", WORKER_ENTRY, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                env=env,
                cwd=repo_root,
            )
            child_sock.close()
            conn = Connection(parent_sock.detach())
            conn.send((configs[group[0]], group))
            self.conns.append(conn)
            self.procs.append(proc)
        # True between sending commands and reading every reply: an exception in between (Ctrl-C)
        # can leave a reply half-read, and the socket stream then no longer parses
        self._in_flight = True
        specs = self._receive_all()
        self.spec = specs[0]

    def _receive_all(self) -> list[Any]:
        """Every worker's replies, flattened to one result per env in env order."""
        results, errors = [], []
        for i, conn in enumerate(self.conns):
            envs = self.groups[i]
            label = f"env {envs[0]}" if len(envs) == 1 else f"envs {envs[0]}-{envs[-1]}"
            try:
                status, payload = conn.recv()
            except EOFError:
                status, payload = "error", f"worker {i} exited (exit code {self.procs[i].poll()})"
            if status == "error":
                errors.append(f"[{label}] {payload}")
                payload = [None] * len(envs)
            results.extend(payload)
        self._in_flight = False
        if errors:
            self.close()
            raise RuntimeError("simulator worker failed:\n" + "\n".join(errors))
        return results

    def _call_all(self, method, args):
        args = list(args)
        if len(args) != self.num_envs:
            raise ValueError(f"{method}: need one argument tuple per env ({self.num_envs}), got {len(args)}")
        self._in_flight = True
        for conn, group in zip(self.conns, self.groups, strict=True):
            conn.send((method, [args[i] for i in group]))
        return self._receive_all()

    def close(self):
        if getattr(self, "_in_flight", False):
            # interrupted mid-call: the command stream may be cut mid-message, so a polite
            # "close" could wait forever on a reply that no longer parses; stop the workers
            for proc in self.procs:
                proc.terminate()
            self.conns = []
        for conn in self.conns:
            try:
                conn.send(("close", ()))
                conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()  # kill is asynchronous: reap it, so close() returns with no worker left
        self.conns, self.procs = [], []

    def __del__(self):
        if getattr(self, "procs", None):
            self.close()


if __name__ == "__main__":
    _worker_entry()
