"""`vla rl`: wires the RL core (``vla.rl``) to the simulators.

The core takes an environment factory; this module builds it from ``sim.make_env`` with what the
policy reads (state or cameras at its image size), on this machine or as Ray actors.
"""

from __future__ import annotations

import functools
from typing import Any

from vla.evaluation.evaluate import observation_kwargs, parse_env_options
from vla.policies.config import PolicyConfig
from vla.rl.trainer import EnvFactory, RLConfig, train_rl


def env_kwargs(config: RLConfig) -> dict[str, Any]:
    """make_env's arguments for the policy's observations (seeds are set per episode by the loop)."""
    from vla.policies.checkpoint import CONFIG_FILE

    path = config.policy / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{config.policy} is not a policy checkpoint (missing {CONFIG_FILE})")
    return {
        **observation_kwargs(PolicyConfig.load(path)),
        "max_episode_steps": config.max_episode_steps,
        "terminate_on_success": config.terminate_on_success,
        "seed": config.seed,
        **parse_env_options(config.env_options),
    }


def env_factory(config: RLConfig) -> EnvFactory:
    from sim import make_env

    kwargs = env_kwargs(config)
    if config.ray_workers:
        from vla.rl.distributed import ray_env_factory

        local = functools.partial(make_env, config.env, vectorization="sync", **kwargs)
        return ray_env_factory(local, config.ray_workers, config.ray_address)
    return functools.partial(make_env, config.env, vectorization=config.vectorization, **kwargs)


def run_rl(config: RLConfig) -> dict[str, Any]:
    return train_rl(config, env_factory(config))
