"""The ROS-free deployment core: observations from joint measurements, actions to joint targets,
and the simulated Franka the ROS graph runs against."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.deployment import (
    ACTION_SPACES,
    STATE_LAYOUTS,
    GripperSwitch,
    Measurement,
    check_observation,
)
from sim.franka_mujoco import SimFrankaConfig, SimulatedFranka, TrajectoryFollower
from vla.registry import UnknownNameError


@pytest.fixture(scope="module")
def sim_franka():
    robot = SimulatedFranka(SimFrankaConfig(seed=3))
    yield robot
    robot.close()


def test_trajectory_follower_interpolates_skips_past_points_and_holds():
    f = TrajectoryFollower(np.zeros(7))
    skipped = f.set_trajectory(
        np.array([np.full(7, 1.0), np.full(7, 2.0), np.full(7, 3.0)]), np.array([0.5, 1.0, 2.0]), now=0.75
    )
    assert skipped == 1  # the point at 0.5 s is already past
    assert np.allclose(f.sample(0.75), 0.0)  # starts from where it was: no jump
    assert np.allclose(f.sample(0.875), 1.0)  # halfway to the point at 1.0 s (2.0)
    assert np.allclose(f.sample(1.5), 2.5)
    assert np.allclose(f.sample(10.0), 3.0)  # holds the last point
    with pytest.raises(ValueError, match="NaN"):
        f.set_trajectory(np.full((1, 7), np.nan), np.array([3.0]), now=2.0)
    assert np.allclose(f.sample(10.0), 3.0)  # a refused trajectory changes nothing


def test_robomimic_state_layout_matches_the_simulator(sim_franka):
    """The node rebuilds observation.state from joint states: it must equal what training saw."""
    from hardware.franka.kinematics import PandaKinematics

    sim_franka.reset(0)
    kin = PandaKinematics.from_robosuite_env(sim_franka.env.raw)
    q0 = sim_franka.joint_positions()
    for _ in range(20):
        sim_franka.gripper_closed = True
        sim_franka.step(q0 + np.array([0.1, -0.05, 0.02, 0.05, 0.0, 0.05, 0.1]))
    # MuJoCo computes site poses before integrating the last substep, so robosuite's own
    # observation lags the joints by 2 ms (< 0.5 mm); recompute kinematics to compare exactly.
    sim_franka.env.raw.sim.forward()
    raw = sim_franka.env.raw._get_observations(force_update=True)
    expected = sim_franka.env._observation(raw)["observation.state"]
    m = Measurement(q=sim_franka.joint_positions(), fingers=sim_franka.finger_positions(), stamp=0.0)
    state = STATE_LAYOUTS.get("robomimic_panda")(kin, m)
    assert state.shape == expected.shape == (16,)
    np.testing.assert_allclose(state, expected, atol=1e-5)


def test_ee_delta_actions_move_the_simulated_arm_the_commanded_way(sim_franka):
    from hardware.franka.kinematics import PandaKinematics

    sim_franka.reset(1)
    kin = PandaKinematics.from_robosuite_env(sim_franka.env.raw)
    space = ACTION_SPACES.get("ee_delta")(kin, gain=0.5)
    start = kin.fk(sim_franka.joint_positions())[0]
    action = np.array([0.0, 0.0, -1.0, 0, 0, 0, -1.0])  # down, gripper open
    for _ in range(10):  # 10 ticks at 20 Hz, each re-anchored at the measured pose
        targets, grippers, converged = space.joint_targets(sim_franka.joint_positions(), action[None].repeat(3, 0))
        assert converged and targets.shape == (3, 7) and np.all(grippers == -1.0)
        for _ in range(5):
            sim_franka.step(targets[0])
    moved = kin.fk(sim_franka.joint_positions())[0] - start
    assert moved[2] < -0.05 and np.abs(moved[:2]).max() < 0.01, moved


def test_joint_position_actions_pass_through_and_registries_list_names():
    space = ACTION_SPACES.get("joint_position")()
    actions = np.arange(16, dtype=np.float64).reshape(2, 8)
    q, g, ok = space.joint_targets(np.zeros(7), actions)
    assert ok and np.array_equal(q, actions[:, :7]) and np.array_equal(g, actions[:, 7])
    with pytest.raises(UnknownNameError, match="ee_delta"):
        ACTION_SPACES.get("cartesian")
    with pytest.raises(UnknownNameError, match="robomimic_panda"):
        STATE_LAYOUTS.get("nope")


def test_gripper_switch_commands_only_on_crossings_with_hysteresis():
    switch = GripperSwitch(threshold=0.0, hysteresis=0.2)
    assert [switch.update(v) for v in (-1.0, -0.9, 0.1, 0.3, 0.1, -0.1, -0.3, 0.5)] == [
        "open",
        None,
        None,
        "close",
        None,
        None,
        "open",
        "close",
    ]


def test_check_observation_refuses_wrong_shapes_missing_features_and_nan():
    meta = {
        "features": {
            "observation.state": {"shape": [16], "dtype": "float32"},
            "observation.images.scene": {"shape": [84, 84, 3], "dtype": "uint8"},
            "task": {"shape": [], "dtype": "str"},
        },
        "head": "meanflow",
        "chunk_size": 8,
        "action_dim": 7,
        "n_action_steps": 4,
        "inference_steps": 1,
        "use_language": True,
    }
    good = {
        "observation.state": np.zeros(16, np.float32),
        "observation.images.scene": np.zeros((84, 84, 3), np.uint8),
        "task": "lift the red cube off the table",
    }
    check_observation(meta, good)
    with pytest.raises(ValueError, match="instruction"):
        check_observation(meta, {k: v for k, v in good.items() if k != "task"})
    with pytest.raises(ValueError, match=r"must have shape \(16,\)"):  # one robot: a batch is refused
        check_observation(meta, {**good, "observation.state": np.zeros((2, 16), np.float32)})
    with pytest.raises(ValueError, match="trained on"):
        check_observation(meta, {**good, "observation.images.scene": np.zeros((480, 640, 3), np.uint8)})
    with pytest.raises(ValueError, match="lacks"):
        check_observation(meta, {"observation.state": good["observation.state"]})
    with pytest.raises(ValueError, match="NaN"):
        check_observation(meta, {**good, "observation.state": np.full(16, np.nan, np.float32)})
