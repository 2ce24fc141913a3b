"""Scripted experts: succeed without a human, from the simulator's privileged state.

An expert is built per env name and runs next to its simulator (inside the vector-env
worker), reading object poses from ``env.raw``:

    expert = make_expert("robomimic/Lift")
    expert.reset(env)            # at the start of every episode
    action = expert.act(env)     # (action_dim,) float32, in the env's action space

Modules register their experts in ``EXPERT_MODULES``; they are imported only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from vla.registry import UnknownNameError

# env-name prefix -> module defining ``EXPERTS: dict[str, type]`` (task -> expert class)
EXPERT_MODULES = {
    "robomimic": "sim.experts.robomimic",
    "maniskill": "sim.experts.maniskill",
    "metaworld": "sim.experts.metaworld",
}


class Expert(Protocol):
    """An expert may also declare ``servoed_action_dims``: the action dims it controls in closed loop,
    on which ``vla collect --action-noise`` injects noise (DART)."""

    def reset(self, env) -> None: ...

    def act(self, env) -> np.ndarray: ...


def expert_tasks(suite: str) -> list[str]:
    module = EXPERT_MODULES.get(suite)
    if module is None:
        return []
    return sorted(importlib.import_module(module).EXPERTS)


def available_experts() -> list[str]:
    return [f"{s}/{t}" for s in EXPERT_MODULES for t in expert_tasks(s)]


def noise_capable_experts() -> list[str]:
    """Experts that declare ``servoed_action_dims`` (usable with ``vla collect --action-noise``)."""
    capable = []
    for suite, module in EXPERT_MODULES.items():
        for task, factory in importlib.import_module(module).EXPERTS.items():
            if getattr(factory, "servoed_action_dims", ()):
                capable.append(f"{suite}/{task}")
    return capable


def make_expert(env_name: str) -> Expert:
    suite, _, task = env_name.partition("/")
    module = EXPERT_MODULES.get(suite)
    experts = importlib.import_module(module).EXPERTS if module else {}
    factory = experts.get(task) if task in experts else experts.get("*")
    if factory is None:
        hint = (
            " LIBERO has no scripted experts: import its public LeRobot datasets (see README)."
            if suite == "libero"
            else ""
        )
        raise UnknownNameError(
            f"no scripted expert for {env_name!r}.{hint} Experts exist for: {', '.join(available_experts())}"
        )
    return factory(task)
