"""Meta-World adapter: task lists, shapes, determinism, rendering, the scripted expert."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metaworld")

from sim import SUITES, make_env  # noqa: E402
from sim.core import EnvConfig  # noqa: E402
from vla import keys  # noqa: E402
from vla.registry import UnknownNameError  # noqa: E402

TASK = "metaworld/pick-place-v3"


def test_tasks_and_groups():
    suite = SUITES.get("metaworld")
    tasks = suite.tasks()
    assert len(tasks) == 50 and "pick-place-v3" in tasks
    groups = suite.task_groups()
    assert len(groups["MT10"]) == 10 and set(groups["MT10"]) <= set(tasks)
    assert sorted(groups["MT50"]) == sorted(tasks)


def test_unknown_task_lists_what_exists():
    with pytest.raises(UnknownNameError) as err:
        make_env("metaworld/pick-plcae-v3")
    assert "pick-place-v3" in str(err.value)


def test_state_mode_steps_and_render():
    with make_env(TASK, num_envs=1, seed=0, max_episode_steps=5) as env:
        spec = env.spec
        assert (spec.action_dim, spec.state_dim, spec.env_state_dim) == (4, 4, 39)
        assert spec.fps == 80 and spec.max_episode_steps == 5 and spec.cameras == ()
        obs = env.reset()
        assert obs[keys.OBS_STATE].shape == (1, 4) and obs[keys.OBS_STATE].dtype == np.float32
        assert obs[keys.OBS_ENV_STATE].shape == (1, 39) and obs[keys.OBS_ENV_STATE].dtype == np.float32
        np.testing.assert_array_equal(obs[keys.OBS_STATE], obs[keys.OBS_ENV_STATE][:, :4])
        assert obs[keys.TASK] == ["pick up the puck and place it at the goal"]
        assert not any(k.startswith(keys.OBS_IMAGE_PREFIX) for k in obs)
        for _step in range(5):
            obs, reward, terminated, truncated, info = env.step(np.full((1, 4), 0.5, np.float32))
            assert reward.shape == (1,) and np.isfinite(reward).all()
        assert truncated[0] and info["episode"][0]["length"] == 5  # the horizon override holds
        frame = env.render("scene")  # rendering works in state mode too
        assert frame.shape == (1, 128, 128, 3) and frame.dtype == np.uint8 and frame.std() > 1


@pytest.mark.rendering
def test_rgb_mode_images():
    with make_env(TASK, num_envs=1, obs_mode="rgb", image_size=(64, 80), seed=0) as env:
        assert env.spec.cameras == ("scene", "wrist")
        obs = env.reset()
        obs, *_ = env.step(np.zeros((1, 4), np.float32))
        for camera in ("scene", "wrist"):
            image = obs[keys.image_key(camera)]
            assert image.shape == (1, 64, 80, 3) and image.dtype == np.uint8 and image.std() > 1


def test_same_seed_same_first_observation():
    from sim.metaworld import build

    a = build(EnvConfig(name=TASK))
    b = build(EnvConfig(name=TASK))
    try:
        b.reset(5)
        for _ in range(20):
            b.step(np.array([1.0, -1.0, 0.5, 1.0], np.float32))
        first, again = a.reset(123), b.reset(123)
        for key in (keys.OBS_STATE, keys.OBS_ENV_STATE):
            np.testing.assert_array_equal(first[key], again[key])
        other = a.reset(124)  # another goal variation
        assert not np.array_equal(first[keys.OBS_ENV_STATE], other[keys.OBS_ENV_STATE])
    finally:
        a.close()
        b.close()


def test_scripted_pick_place_succeeds():
    with make_env(TASK, num_envs=1, seed=0) as env:
        env.reset()
        for _ in range(env.spec.max_episode_steps):
            actions = env.expert_actions()
            assert actions.shape == (1, 4) and actions.dtype == np.float32
            # labels are what the env executes: inside its action space, never the saturated gains
            assert np.all(np.abs(actions) <= 1.0)
            _, _, terminated, truncated, info = env.step(actions)
            if info["episode"][0] is not None:
                break
        episode = info["episode"][0]
        assert episode is not None and episode["success"], episode
        assert terminated[0] and not truncated[0]
