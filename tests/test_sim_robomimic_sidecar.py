"""RoboMimic's TwoArmTransport and ToolHang, run on robosuite 1.5 in the sidecar venv.

They go through the real entry point (``make_env``), which always runs them in subprocess
workers started with the sidecar's interpreter (scripts/setup_env.sh builds it).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim import make_env
from sim.robomimic import sidecar_python
from sim.vector import SubprocVectorEnv
from vla import keys

pytestmark = pytest.mark.skipif(
    not sidecar_python().exists(),
    reason=f"robosuite 1.5 sidecar interpreter not found at {sidecar_python()} (scripts/setup_env.sh builds it)",
)

# task -> (action_dim, state_dim, image cameras)
TASKS = {
    "TwoArmTransport": (14, 32, ("scene", "wrist", "wrist_right")),
    "ToolHang": (7, 16, ("scene", "wrist")),
}


def _assert_obs(obs, spec, num_envs):
    assert obs[keys.OBS_STATE].shape == (num_envs, spec.state_dim)
    assert obs[keys.OBS_STATE].dtype == np.float32
    assert obs[keys.OBS_ENV_STATE].shape == (num_envs, spec.env_state_dim)
    assert obs[keys.OBS_ENV_STATE].dtype == np.float32
    assert obs[keys.TASK] == [spec.instruction] * num_envs
    assert np.isfinite(obs[keys.OBS_STATE]).all() and np.isfinite(obs[keys.OBS_ENV_STATE]).all()


@pytest.mark.parametrize("task", list(TASKS))
def test_state_steps_and_determinism(task):
    action_dim, state_dim, _ = TASKS[task]
    with make_env(f"robomimic/{task}", num_envs=2, obs_mode="state", seed=0) as env:
        assert isinstance(env, SubprocVectorEnv)
        spec = env.spec
        assert (spec.action_dim, spec.state_dim) == (action_dim, state_dim)
        assert spec.extra["robosuite_version"].startswith("1.5")
        first = env.reset()
        _assert_obs(first, spec, 2)
        assert not any(k.startswith(keys.OBS_IMAGE_PREFIX) for k in first)
        # the two envs get different episode seeds, hence different object placements
        assert not np.array_equal(first[keys.OBS_ENV_STATE][0], first[keys.OBS_ENV_STATE][1])

        rng = np.random.default_rng(0)
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, (2, action_dim)))
            _assert_obs(obs, spec, 2)
            assert reward.shape == (2,) and reward.dtype == np.float32
            assert terminated.shape == truncated.shape == info["success"].shape == (2,)
            assert not info["success"].any()
        assert not np.array_equal(obs[keys.OBS_STATE], first[keys.OBS_STATE])  # the arms moved

        # the same seed gives the same first observation, after any history
        again = env.reset(seed=0)
        for key in (keys.OBS_STATE, keys.OBS_ENV_STATE):
            np.testing.assert_array_equal(again[key], first[key])


@pytest.mark.rendering
@pytest.mark.parametrize("task", list(TASKS))
def test_rgb_single_env(task):
    action_dim, _, cameras = TASKS[task]
    with make_env(f"robomimic/{task}", num_envs=1, obs_mode="rgb", image_size=32, seed=1) as env:
        assert isinstance(env, SubprocVectorEnv)  # another interpreter: a subprocess even for one env
        assert env.spec.cameras == cameras
        first = env.reset()
        _assert_obs(first, env.spec, 1)
        for camera in cameras:
            image = first[keys.image_key(camera)]
            assert image.shape == (1, 32, 32, 3) and image.dtype == np.uint8
            assert image.std() > 0  # rendered something
        for _ in range(2):
            obs, *_ = env.step(np.zeros((1, action_dim)))
        assert obs[keys.image_key("scene")].shape == (1, 32, 32, 3)
        frame = env.render("scene")
        assert frame.shape == (1, 32, 32, 3) and frame.dtype == np.uint8

        again = env.reset(seed=1)
        for key in first:
            if key != keys.TASK:
                np.testing.assert_array_equal(again[key], first[key])
