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


def test_square_expert_fits_the_nut_on_the_peg():
    """The nut's yaw varies per episode: grasped by its handle, turned square to the peg, lowered over it."""
    episodes_wanted = scale(3, 20)
    env = make_env("robomimic/NutAssemblySquare", num_envs=1, obs_mode="state", seed=0, vectorization="sync")
    episodes = []
    try:
        env.reset()
        while len(episodes) < episodes_wanted:
            *_, info = env.step(env.expert_actions())
            episodes += [e for e in info["episode"] if e]
    finally:
        env.close()
    rate = np.mean([e["success"] for e in episodes])
    assert rate >= 0.9, f"NutAssemblySquare expert success {rate:.2f} over {len(episodes)} episodes: {episodes}"


def test_square_expert_turns_grasp_the_handle_and_keep_the_wrist_off_its_limits():
    from sim.experts.robomimic import WRIST_LIMIT, WRIST_MARGIN, NutAssemblySquareExpert, wrap

    for nut_yaw in np.linspace(-np.pi, np.pi, 73):
        # the arm starts with the fingers closing along -y (+-6 degrees) and the wrist near 0.8 rad
        for finger_yaw in (-np.pi / 2 - 0.1, -np.pi / 2, -np.pi / 2 + 0.1):
            for wrist in (0.6, 0.8, 1.0):
                turn, square_turn = NutAssemblySquareExpert.turns(nut_yaw, finger_yaw, wrist)
                # the fingers close across the handle (along the nut's y axis, modulo pi)
                assert abs(wrap(finger_yaw + turn - nut_yaw - np.pi / 2, np.pi)) < 1e-9
                # squared on the peg, the handle points along -x, +y or -y (never +x: out of reach)
                heading = wrap(nut_yaw + square_turn)
                assert min(abs(wrap(heading - h)) for h in (np.pi, np.pi / 2, -np.pi / 2)) < 1e-9
                assert max(abs(wrist - turn), abs(wrist - turn - square_turn)) <= WRIST_LIMIT - WRIST_MARGIN
                assert abs(turn) + abs(square_turn) <= np.pi + 1e-9


def test_joint_target_controller_reaches_absolute_targets_and_lists_controllers():
    env = make_env(
        "robomimic/Lift",
        num_envs=1,
        obs_mode="state",
        seed=0,
        vectorization="sync",
        controller="JOINT_TARGET",
        max_joint_step=0.05,
    )
    try:
        assert env.spec.action_dim == 8 and env.spec.extra["controller"] == "JOINT_TARGET"
        low, high = np.array(env.spec.action_low), np.array(env.spec.action_high)
        np.testing.assert_allclose(low[[3, 5]], [-3.0718, -0.0175], atol=1e-3)  # the Panda's joint range
        np.testing.assert_allclose(high[[3, 5]], [-0.0698, 3.7525], atol=1e-3)
        assert (low[7], high[7]) == (-1.0, 1.0)
        obs = env.reset()
        q0 = obs[keys.OBS_STATE][0, :7].astype(np.float64)
        target = q0 + np.array([0.15, -0.1, 0.1, 0.1, -0.1, 0.1, 0.2])
        q_prev, steps = q0, []
        for _ in range(15):
            obs, *_ = env.step(np.concatenate([target, [-1.0]])[None])
            q = obs[keys.OBS_STATE][0, :7].astype(np.float64)
            steps.append(np.abs(q - q_prev).max())
            q_prev = q
        assert np.abs(q_prev - target).max() < 0.02, (q_prev, target)  # absolute targets are reached ...
        assert max(steps) < 0.05 * 1.5, steps  # ... no faster than max_joint_step per control step
        # joint 6 beyond pi (its range is -0.02..3.75 rad): the state reports the angle, never wrapped
        target[5] = 3.4
        for _ in range(20):
            obs, *_ = env.step(np.concatenate([target, [-1.0]])[None])
        assert 3.2 < obs[keys.OBS_STATE][0, 5] <= 3.41, obs[keys.OBS_STATE][0, :7]  # atan2 would give < -2.8
    finally:
        env.close()
    with pytest.raises(ValueError, match="OSC_POSE, JOINT_POSITION, JOINT_TARGET"):
        make_env("robomimic/Lift", num_envs=1, obs_mode="state", vectorization="sync", controller="OSC")


def test_collect_labels_joint_targets_with_the_next_joint_positions(tmp_path):
    from sim.collect import CollectConfig, collect
    from vla.datasets.lerobot_io import load_dataset

    out = tmp_path / "lift_joint"
    result = collect(
        CollectConfig(
            env="robomimic/Lift",
            episodes=1,
            out=out,
            num_envs=1,
            obs_mode="state",
            action_label="joint_target",
            vectorization="sync",
        )
    )
    assert result.written == 1
    data = load_dataset(out)
    state = np.stack([np.asarray(data[i][keys.OBS_STATE]) for i in range(len(data))])
    action = np.stack([np.asarray(data[i][keys.ACTION]) for i in range(len(data))])
    assert action.shape == (len(data), 8)
    np.testing.assert_allclose(action[:-1, :7], state[1:, :7], atol=1e-6)  # target = where the arm went next
    assert set(np.unique(action[:, 7])) <= {-1.0, 1.0} and action[-1, 7] == 1.0  # gripper closed at the lift
    with pytest.raises(ValueError, match="RoboMimic"):
        collect(CollectConfig(env="metaworld/reach-v3", episodes=1, out=tmp_path / "mw", action_label="joint_target"))
    with pytest.raises(KeyError, match="command, joint_target"):
        collect(CollectConfig(env="robomimic/Lift", episodes=1, out=tmp_path / "x", action_label="joints"))


def test_an_episode_depends_on_its_seed_not_on_the_episodes_before():
    """robosuite's soft reset kept the gripper's integrated command; the same seed then gave
    another trajectory after a different history (RL resume and GRPO groups rely on this)."""
    from sim import make_env

    def episode(env, seed):
        obs = env.reset_episodes([seed])
        states = [obs[keys.OBS_STATE]]
        rng = np.random.default_rng(0)
        for _ in range(3):
            obs, *_ = env.step(rng.uniform(-1, 1, (1, 3, 7)).astype(np.float32))
            states.append(obs[keys.OBS_STATE])
        return np.concatenate(states)

    with make_env("robomimic/Lift", num_envs=1, max_episode_steps=50, vectorization="sync") as env:
        first = episode(env, 5)
        episode(env, 7)
        np.testing.assert_array_equal(episode(env, 5), first)
