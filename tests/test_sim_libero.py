"""LIBERO adapter: task names and instructions, shapes, determinism, rgb observations.

Building a LIBERO env takes seconds and CPU rendering runs at a few steps per second,
so these checks use one task, 64x64 images and a handful of steps.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero.libero")

from sim import (  # noqa: E402
    SUITES,
    libero,  # noqa: E402
    make_env,
)
from sim.core import EnvConfig  # noqa: E402
from vla import keys  # noqa: E402
from vla.registry import UnknownNameError  # noqa: E402

SIZES = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
SPATIAL_0 = "libero_spatial.pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"


def test_every_benchmark_lists_tasks_with_instructions():
    suite = SUITES.get("libero")
    groups = suite.task_groups()
    assert {name: len(tasks) for name, tasks in groups.items()} == SIZES
    tasks = suite.tasks()
    assert len(tasks) == len(set(tasks)) == sum(SIZES.values())
    for bench, names in groups.items():
        for index, name in enumerate(names):
            assert name.startswith(bench + ".") and name in tasks
            text = libero.task_instruction(name)
            assert isinstance(text, str) and len(text.split()) >= 2 and "_" not in text
            assert libero.canonical_task(f"{bench}.{index}") == name
    assert groups["libero_spatial"][0] == SPATIAL_0


def test_unknown_task_lists_what_exists():
    with pytest.raises(UnknownNameError) as err:
        make_env("libero/libero_spatial.pick_up_the_black_bowl")
    message = str(err.value)
    assert "Available:" in message and sorted(libero.list_tasks())[0] in message
    with pytest.raises(UnknownNameError) as err:
        libero.canonical_task("libero_100.0")
    assert "libero_spatial" in str(err.value) and "libero_90" in str(err.value)
    with pytest.raises(UnknownNameError):
        libero.canonical_task("libero_goal.10")


def test_state_mode_steps_determinism_and_render():
    env = libero.build(EnvConfig(name="libero/libero_spatial.0", image_size=(64, 64)))
    try:
        spec = env.spec
        assert (spec.action_dim, spec.state_dim, spec.fps, spec.max_episode_steps) == (7, 16, 20, 220)
        assert spec.cameras == () and spec.instruction == libero.task_instruction(SPATIAL_0)
        first = env.reset(7)
        assert first[keys.OBS_STATE].shape == (16,) and first[keys.OBS_STATE].dtype == np.float32
        assert (
            first[keys.OBS_ENV_STATE].shape == (spec.env_state_dim,) and first[keys.OBS_ENV_STATE].dtype == np.float32
        )
        assert not any(k.startswith(keys.OBS_IMAGE_PREFIX) for k in first)
        rng = np.random.default_rng(0)
        for _ in range(3):
            obs, reward, success = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            assert obs[keys.OBS_STATE].shape == (16,) and isinstance(success, bool) and reward == 0.0
        again = env.reset(7)  # same seed after an episode: identical first observation
        for key in (keys.OBS_STATE, keys.OBS_ENV_STATE):
            np.testing.assert_array_equal(first[key], again[key])
        other = env.reset(8)  # another of the benchmark's fixed initial states
        assert not np.array_equal(first[keys.OBS_ENV_STATE], other[keys.OBS_ENV_STATE])
        frame = env.render("scene")  # rendering works in state mode
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1
    finally:
        env.close()


@pytest.mark.rendering
def test_rgb_mode_spatial_task_via_make_env():
    with make_env(f"libero/{SPATIAL_0}", num_envs=1, obs_mode="rgb", image_size=64, seed=0) as env:
        assert env.spec.cameras == ("scene", "wrist")
        obs = env.reset()
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(np.zeros((1, 7), np.float32))
        assert obs[keys.TASK] == [libero.task_instruction(SPATIAL_0)]
        assert obs[keys.OBS_STATE].shape == (1, 16)
        for camera in ("scene", "wrist"):
            image = obs[keys.image_key(camera)]
            assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8 and image.std() > 1
        assert not terminated[0] and not info["success"][0]
