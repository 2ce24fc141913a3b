"""``make_env("<suite>/<task>", ...)``: the one entry point that builds a batched environment.

It sits above both the suite registry and the vector envs so that neither imports the other
(the vector workers build single envs through ``sim.registry``; this module picks the vector
env).
"""

from __future__ import annotations

import os
from typing import Any

from sim.core import EnvConfig, check_obs_mode
from sim.registry import split_name
from sim.rendering import DEFAULT_RENDER_QUALITY
from sim.rendering import render_quality as render_quality_named
from sim.vector import SubprocVectorEnv, SyncVectorEnv


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


VECTORIZATIONS = ("auto", "sync", "subprocess", "gpu")


def make_env(
    name: str,
    num_envs: int = 1,
    obs_mode: str = "state",
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    cameras: tuple[str, ...] | None = None,
    max_episode_steps: int | None = None,
    terminate_on_success: bool = True,
    vectorization: str = "auto",
    workers: int | None = None,
    render_quality: str = DEFAULT_RENDER_QUALITY,
    **options: Any,
):
    """Build a batched environment for ``"<suite>/<task>"``.

    ``vectorization``: ``sync`` steps every env in this process, ``subprocess`` spreads them
    over ``workers`` processes (default: one per core, each stepping its share in turn), ``gpu`` uses the suite's GPU-batched simulator (ManiSkill physx_cuda).
    ``auto`` picks ``gpu`` when the suite has one and CUDA is present, ``sync`` for one env
    and ``subprocess`` otherwise. ``render_quality`` is the camera look of the MuJoCo suites
    (``fast`` or ``default``, sim/rendering.py).
    """
    check_obs_mode(obs_mode)
    render_quality_named(render_quality)  # an unknown name fails here, listing what exists
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"unknown vectorization {vectorization!r}; available: {', '.join(VECTORIZATIONS)}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    suite, task = split_name(name)
    name = f"{suite.name}/{task}"
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    config = EnvConfig(
        name=name,
        obs_mode=obs_mode,
        image_size=size,
        cameras=tuple(cameras) if cameras else None,
        seed=seed,
        max_episode_steps=max_episode_steps,
        terminate_on_success=terminate_on_success,
        options=options,
        render_quality=render_quality,
    )
    gpu_env = suite.gpu_vector_env()
    if vectorization == "auto":
        if gpu_env is not None and cuda_available() and os.environ.get("VLA_SIM_NO_GPU") != "1":
            vectorization = "gpu"
        else:
            vectorization = "sync" if num_envs == 1 else "subprocess"
    if vectorization == "gpu":
        if gpu_env is None:
            raise ValueError(f"suite {suite.name!r} has no GPU-batched simulator; use 'subprocess'")
        if not cuda_available():
            raise RuntimeError("vectorization='gpu' asked for, but CUDA is not available")
        return gpu_env(config, num_envs)
    configs = [config] * num_envs
    python = suite.worker_python(task)
    if python is not None:  # the task lives in another interpreter: always a subprocess
        return SubprocVectorEnv(configs, python=python, workers=workers)
    return SyncVectorEnv(configs) if vectorization == "sync" else SubprocVectorEnv(configs, workers=workers)
