"""ManiSkill adapter: observation format, determinism, action validation, scripted expert, GPU batch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mani_skill")

from sim import make_env  # noqa: E402
from sim.core import EnvConfig  # noqa: E402
from vla import keys  # noqa: E402

TASK = "maniskill/PickCube-v1"
SCENE = keys.image_key("scene")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def state_env():
    env = make_env(TASK, num_envs=1, seed=0, vectorization="sync")
    yield env
    env.close()


def test_tasks_listed():
    from sim import maniskill

    for task in ("PickCube-v1", "PushCube-v1", "StackCube-v1", "PegInsertionSide-v1"):
        assert task in maniskill.list_tasks()


def test_state_mode_steps(state_env):
    spec = state_env.spec
    assert (spec.action_dim, spec.state_dim, spec.fps, spec.max_episode_steps) == (7, 16, 20, 50)
    assert spec.extra["reward"] == "normalized_dense"
    obs = state_env.reset(seed=0)
    assert obs[keys.OBS_STATE].shape == (1, 16) and obs[keys.OBS_STATE].dtype == np.float32
    assert obs[keys.OBS_ENV_STATE].shape == (1, spec.env_state_dim) and obs[keys.OBS_ENV_STATE].dtype == np.float32
    assert obs[keys.TASK] == [spec.instruction]
    assert SCENE not in obs
    for _ in range(3):
        obs, reward, terminated, truncated, info = state_env.step(np.zeros((1, 7), np.float32))
    assert reward.shape == (1,) and reward.dtype == np.float32
    assert terminated.dtype == bool and truncated.dtype == bool and info["success"].shape == (1,)
    assert np.isfinite(obs[keys.OBS_ENV_STATE]).all()
    frame = state_env.render("scene")  # render works without image observations
    assert frame.shape == (1, 128, 128, 3) and frame.dtype == np.uint8


def test_same_seed_same_first_observation(state_env):
    first = state_env.reset(seed=5)
    state_env.step(np.full((1, 7), 0.3, np.float32))
    again = state_env.reset(seed=5)
    other = state_env.reset(seed=6)
    for key in (keys.OBS_STATE, keys.OBS_ENV_STATE):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first[keys.OBS_ENV_STATE], other[keys.OBS_ENV_STATE])


@pytest.mark.parametrize(
    "action",
    [np.zeros((1, 6), np.float32), np.zeros((2, 7), np.float32), np.array([[0, 0, np.nan, 0, 0, 0, 1]], np.float32)],
    ids=["short", "batch", "nan"],
)
def test_bad_actions_raise_before_stepping(state_env, action):
    state_env.reset(seed=1)
    raw = state_env.workers[0].runner.env.raw
    before = int(raw.elapsed_steps[0])
    with pytest.raises(ValueError):
        state_env.step(action)
    assert int(raw.elapsed_steps[0]) == before


def test_single_env_validates_too():
    from sim.maniskill import build

    env = build(EnvConfig(name=TASK))
    try:
        env.reset(0)
        with pytest.raises(ValueError):
            env.step(np.array([0, 0, 0, 0, 0, 0, np.inf], np.float32))
        with pytest.raises(ValueError):
            env.step(np.zeros(8, np.float32))
        assert int(env.raw.elapsed_steps[0]) == 0
    finally:
        env.close()


def test_rgb_mode_images():
    env = make_env(TASK, num_envs=1, obs_mode="rgb", image_size=(64, 80), vectorization="sync")
    try:
        assert env.spec.cameras == ("scene",)
        obs = env.reset(seed=0)
        assert obs[SCENE].shape == (1, 64, 80, 3) and obs[SCENE].dtype == np.uint8
        obs, *_ = env.step(np.zeros((1, 2, 7), np.float32))  # a chunk
        assert obs[SCENE].shape == (1, 64, 80, 3) and obs[SCENE].std() > 0
        frame = env.render("scene")
        assert frame.shape == (1, 64, 80, 3) and frame.dtype == np.uint8
    finally:
        env.close()


def test_pickcube_expert_succeeds(state_env):
    state_env.reset(seed=0)
    for _ in range(state_env.spec.max_episode_steps):
        _, _, _, _, info = state_env.step(state_env.expert_actions())
        episode = info["episode"][0]
        if episode is not None:
            break
    assert episode is not None and episode["success"], episode
    assert episode["length"] < state_env.spec.max_episode_steps


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA (ManiSkill physx_cuda)")
def test_gpu_vector_env_chunks():
    env = make_env(TASK, num_envs=4, obs_mode="rgb", image_size=64, max_episode_steps=5, vectorization="gpu")
    try:
        obs = env.reset(seed=0)
        assert obs[keys.OBS_STATE].shape == (4, 16) and obs[SCENE].shape == (4, 64, 64, 3)
        finished = 0
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(np.zeros((4, 3, 7), np.float32))
            assert reward.shape == (4,) and info["steps"].max() <= 3
            finished += sum(e is not None for e in info["episode"])
            for i in np.flatnonzero(terminated | truncated):
                assert info["final_observation"][i] is not None and info["episode"][i]["length"] <= 5
        assert finished >= 4  # every env hit the 5-step limit at least once in 9 steps
        assert env.render("scene").shape == (4, 64, 64, 3)
    finally:
        env.close()
