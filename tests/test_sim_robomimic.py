"""RoboMimic tasks on robosuite 1.4: stepping, cameras, and the scripted experts."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import scale
from sim import make_env
from vla import keys


@pytest.mark.parametrize("task", ["Lift", "PickPlaceCan", "NutAssemblySquare"])
def test_steps_in_rgb_with_both_cameras(task):
    env = make_env(f"robomimic/{task}", num_envs=1, obs_mode="rgb", image_size=(48, 64), seed=0)
    try:
        obs = env.reset()
        for _ in range(3):
            obs, reward, term, trunc, info = env.step(np.zeros((1, env.spec.action_dim)))
        for camera in (keys.CAMERA_SCENE, keys.CAMERA_WRIST):
            image = obs[keys.image_key(camera)]
            assert image.shape == (1, 48, 64, 3) and image.dtype == np.uint8
            assert image.std() > 5, "a rendered scene is not a flat image"
        assert reward.shape == (1,) and info["success"].dtype == bool
        assert env.render(keys.CAMERA_SCENE).shape == (1, 48, 64, 3)
    finally:
        env.close()


def test_images_are_upright():
    """The table (bottom of the agentview) is lighter than the dark background above the robot."""
    env = make_env("robomimic/Lift", num_envs=1, obs_mode="rgb", image_size=64, seed=0)
    try:
        image = env.reset()[keys.image_key(keys.CAMERA_SCENE)][0].astype(float)
        assert image[-16:].mean() > image[:16].mean()
    finally:
        env.close()


@pytest.mark.parametrize("task", ["Lift", "PickPlaceCan"])
def test_scripted_expert_succeeds(task):
    episodes_wanted = scale(2, 20)
    env = make_env(f"robomimic/{task}", num_envs=2, seed=0)
    episodes = []
    try:
        env.reset()
        while len(episodes) < episodes_wanted:
            _, _, term, _, info = env.step(env.expert_actions())
            episodes += [e for e in info["episode"] if e]
            assert all(e["success"] == t for e, t in zip(info["episode"], term, strict=True) if e)
    finally:
        env.close()
    rate = np.mean([e["success"] for e in episodes])
    assert rate >= 0.9, f"{task} expert success {rate:.2f} over {len(episodes)} episodes"
