"""Panda kinematics vs robosuite 1.4's own Lift env, and OSC_POSE deltas -> joint targets vs its OSC controller."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hardware.franka.kinematics import (
    ARM_JOINT_NAMES,
    EEDeltaToJoint,
    OscDeltaConfig,
    PandaKinematics,
    axis_angle_to_mat,
    mat_to_axis_angle,
    mat_to_quat_wxyz,
    quat_wxyz_to_mat,
    rotation_error,
)
from hardware.franka.limits import PANDA


@pytest.fixture(scope="module")
def lift_env():
    import robosuite
    from robosuite.controllers import load_controller_config

    env = robosuite.make(
        "Lift",
        robots="Panda",
        controller_configs=load_controller_config(default_controller="OSC_POSE"),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
    )
    env.reset()
    yield env
    env.close()


@pytest.fixture(scope="module")
def kin(lift_env):
    return PandaKinematics.from_robosuite_env(lift_env)


def _set_q(env, q):
    """Put the arm at ``q`` at rest, the way a state reset does."""
    robot = env.robots[0]
    env.sim.data.qpos[robot._ref_joint_pos_indexes] = q
    env.sim.data.qvel[robot._ref_joint_vel_indexes] = 0.0
    env.sim.forward()


def _angle(rot_a, rot_b):
    return float(np.linalg.norm(rotation_error(rot_a, rot_b)))


def _near_home(kin, rng, n, spread=0.3):
    home = np.array([0.0, 0.196, 0.0, -2.618, 0.0, 2.942, 0.785])  # robosuite Panda init_qpos
    return [np.clip(home + rng.normal(0.0, spread, 7), kin.q_min, kin.q_max) for _ in range(n)]


def test_module_imports_no_simulator():
    code = "import sys, hardware.franka.kinematics; print([m for m in ('mujoco', 'robosuite') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_robosuite_model_joint_ranges_are_the_panda_limits(kin):
    ranges = np.array([kin.model.joint(name).range for name in ARM_JOINT_NAMES])
    np.testing.assert_allclose(ranges[:, 0], PANDA.q_min, atol=1e-9)
    np.testing.assert_allclose(ranges[:, 1], PANDA.q_max, atol=1e-9)
    np.testing.assert_array_equal(kin.q_min, PANDA.q_min)


def test_base_pose_is_read_from_the_env(lift_env, kin):
    np.testing.assert_allclose(kin.base_pos, lift_env.robots[0].base_pos, atol=1e-12)
    assert kin.base_pos[2] > 0.5, "Lift mounts the robot base above the floor"
    np.testing.assert_allclose(kin.base_rot, lift_env.sim.data.get_body_xmat("robot0_base"), atol=1e-12)


def test_fk_and_jacobian_match_robosuite(lift_env, kin):
    robot = lift_env.robots[0]
    ctrl = robot.controller
    rng = np.random.default_rng(0)
    for _ in range(8):
        q = rng.uniform(kin.q_min, kin.q_max)
        _set_q(lift_env, q)
        obs = lift_env._get_observations(force_update=True)
        pos, rot = kin.fk(q)
        assert np.abs(pos - obs["robot0_eef_pos"]).max() < 1e-6
        sim_rot = lift_env.sim.data.site_xmat[robot.eef_site_id].reshape(3, 3)
        assert np.abs(rot - sim_rot).max() < 1e-6
        # the observation policies see, sign included
        assert np.abs(kin.fk_eef_quat_xyzw(q) - obs["robot0_eef_quat"]).max() < 1e-6
        quat = kin.eef_quat_xyzw(rot, reference=obs["robot0_eef_quat"])
        assert np.abs(quat - obs["robot0_eef_quat"]).max() < 1e-6
        ctrl.update(force=True)
        assert np.abs(kin.jacobian(q) - ctrl.J_full).max() < 1e-6


def test_eef_quat_sign_without_reference_is_canonical(kin):
    rot = kin.fk(np.array([0.0, 0.196, 0.0, -2.618, 0.0, 2.942, 0.785]))[1]
    quat = kin.eef_quat_xyzw(rot)
    assert quat[3] >= 0.0 and abs(np.linalg.norm(quat) - 1.0) < 1e-12
    assert np.abs(kin.eef_quat_xyzw(rot, reference=-quat) + quat).max() < 1e-12


def test_ik_round_trip(kin):
    rng = np.random.default_rng(1)
    for _ in range(25):
        q_true = rng.uniform(kin.q_min, kin.q_max)
        target_pos, target_rot = kin.fk(q_true)
        seed = np.clip(q_true + rng.normal(0.0, 0.3, 7), kin.q_min, kin.q_max)
        q, converged, err = kin.ik(target_pos, target_rot, seed)
        assert converged and err < 1e-6
        assert np.all(q >= kin.q_min) and np.all(q <= kin.q_max)
        pos, rot = kin.fk(q)
        assert np.linalg.norm(pos - target_pos) < 1e-3 and _angle(target_rot, rot) < 1e-2


def test_ik_out_of_reach_stays_within_limits(kin):
    q, converged, err = kin.ik(kin.base_pos + [2.0, 0.0, 0.0], np.eye(3), np.zeros(7))
    assert not converged and err > 0.5
    assert np.all(q >= kin.q_min) and np.all(q <= kin.q_max)


def test_ik_keeps_joints_at_their_limit(kin):
    """A target reachable only past joint 4's upper limit is approached with q4 clipped, not violated."""
    q_true = np.array([0.0, 0.3, 0.0, -0.0698, 0.0, 1.5, 0.785])  # arm stretched, q4 on its upper limit
    pos, rot = kin.fk(q_true)
    q, _, _ = kin.ik(pos + kin.base_rot @ [0.05, 0.0, 0.0], rot, q_true)  # further out than the stretched arm
    assert q[3] <= kin.q_max[3] and np.all(q >= kin.q_min) and np.all(q <= kin.q_max)


def test_config_defaults_are_robosuite_osc_pose_defaults():
    cfg = OscDeltaConfig()
    assert cfg == OscDeltaConfig.from_robosuite_defaults()
    scaled = cfg.scale([1.5, -1.0, 0.5, 0.2, -3.0, 0.0])
    np.testing.assert_allclose(scaled, [0.05, -0.05, 0.025, 0.1, -0.5, 0.0])


def test_goal_matches_robosuite_osc_controller(lift_env, kin):
    """The pose robosuite's OSC sets as its goal is the pose our joint target reaches."""
    ctrl = lift_env.robots[0].controller
    rng = np.random.default_rng(2)
    for q in _near_home(kin, rng, 6):
        action = np.concatenate([rng.uniform(-1.3, 1.3, 6), [rng.uniform(-1, 1)]])  # some components clipped
        _set_q(lift_env, q)
        ctrl.update(force=True)
        ctrl.set_goal(action[:6])
        converter = EEDeltaToJoint(kin)
        q_target, gripper = converter.convert(q, action)
        assert converter.last_ik.converged
        assert gripper == pytest.approx(np.clip(action[6], -1, 1))
        pos, rot = kin.fk(q_target)
        assert np.linalg.norm(pos - ctrl.goal_pos) < 1e-3
        assert _angle(ctrl.goal_ori, rot) < 1e-2
        assert np.abs(q_target - q).max() > 1e-3, "a non-zero action moves the joints"


def test_zero_rotation_holds_previous_goal_orientation_like_robosuite(lift_env, kin):
    ctrl = lift_env.robots[0].controller
    q1, q2 = _near_home(kin, np.random.default_rng(3), 2)
    turn = np.array([0.2, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0])
    move = np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    converter = EEDeltaToJoint(kin)
    for q, action in ((q1, turn), (q2, move)):
        _set_q(lift_env, q)
        ctrl.update(force=True)
        ctrl.set_goal(action[:6])
        q_target, _ = converter.convert(q, action)
    pos, rot = kin.fk(q_target)
    assert np.linalg.norm(pos - ctrl.goal_pos) < 1e-3 and _angle(ctrl.goal_ori, rot) < 1e-2
    assert _angle(rot, kin.fk(q2)[1]) > 0.05, "the held goal is not the current orientation"
    stateless = EEDeltaToJoint(kin, OscDeltaConfig(hold_orientation_on_zero_rotation=False))
    assert _angle(stateless.goal_pose(q2, move)[1], kin.fk(q2)[1]) < 1e-12
    converter.reset()
    assert _angle(converter.goal_pose(q2, move)[1], kin.fk(q2)[1]) < 1e-12


def test_short_episode_moves_the_way_the_joint_targets_do(lift_env, kin):
    """20 OSC steps in the simulator and 20 converted joint targets displace the EE the same way."""
    lift_env.reset()
    robot = lift_env.robots[0]
    action = np.array([-0.3, 0.2, 0.2, 0.0, 0.0, 0.15, -1.0])  # 20 steps: -30, 20, 20 cm, 1.5 rad: in reach
    q0 = np.array(lift_env.sim.data.qpos[robot._ref_joint_pos_indexes])
    pos0, rot0 = kin.fk(q0)
    obs = lift_env._get_observations(force_update=True)
    assert np.abs(pos0 - obs["robot0_eef_pos"]).max() < 1e-6
    for _ in range(20):
        lift_env.step(action)
    q_sim = np.array(lift_env.sim.data.qpos[robot._ref_joint_pos_indexes])
    sim_pos, sim_rot = kin.fk(q_sim)
    lift_env.sim.forward()  # mj_step leaves site_xpos one substep behind qpos
    assert np.abs(sim_pos - lift_env.sim.data.site_xpos[robot.eef_site_id]).max() < 1e-6

    converter = EEDeltaToJoint(kin)
    q = q0
    for _ in range(20):
        q, _ = converter.convert(q, action)
        assert converter.last_ik.converged
    kin_pos, kin_rot = kin.fk(q)

    def cosine(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(sim_pos - pos0, kin_pos - pos0) > 0.95
    assert cosine(rotation_error(sim_rot, rot0), rotation_error(kin_rot, rot0)) > 0.95
    # the joint-target rollout reaches exactly the commanded goals: 20 x the scaled delta
    np.testing.assert_allclose(kin_pos - pos0, 20 * OscDeltaConfig().scale(action[:6])[:3], atol=1e-5)


def test_base_pose_transforms_fk_and_ik():
    plain = PandaKinematics()
    quat = np.array([np.cos(0.4), 0.0, 0.0, np.sin(0.4)])  # 0.8 rad about z
    moved = PandaKinematics(base_pos=[0.3, -0.2, 0.9], base_quat=quat)
    rot_b = quat_wxyz_to_mat(quat)
    q = np.array([0.3, -0.5, 0.2, -2.0, 0.1, 1.8, 0.4])
    p0, r0 = plain.fk(q)
    p1, r1 = moved.fk(q)
    np.testing.assert_allclose(p1, rot_b @ p0 + [0.3, -0.2, 0.9], atol=1e-12)
    np.testing.assert_allclose(r1, rot_b @ r0, atol=1e-12)
    np.testing.assert_allclose(moved.jacobian(q)[:3], rot_b @ plain.jacobian(q)[:3], atol=1e-12)
    quat = moved.fk_eef_quat_xyzw(q)
    np.testing.assert_allclose(moved.eef_quat_xyzw(r1, reference=quat), quat, atol=1e-9)
    q_back, converged, _ = moved.ik(p1, r1, q + 0.2)
    assert converged and np.linalg.norm(moved.fk(q_back)[0] - p1) < 1e-6


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(4)
    for angle in (0.0, 1e-8, 0.3, 2.0, np.pi - 1e-6, np.pi):
        axis = rng.normal(size=3)
        vec = angle * axis / np.linalg.norm(axis)
        rot = axis_angle_to_mat(vec)
        back = mat_to_axis_angle(rot)
        assert np.linalg.norm(axis_angle_to_mat(back) - rot) < 1e-6
        np.testing.assert_allclose(quat_wxyz_to_mat(mat_to_quat_wxyz(rot)), rot, atol=1e-12)


def test_bad_input_is_refused(kin):
    converter = EEDeltaToJoint(kin)
    good_q = np.array([0.0, 0.196, 0.0, -2.618, 0.0, 2.942, 0.785])
    good_a = np.zeros(7)
    with pytest.raises(ValueError, match=r"q_current must have shape \(7,\)"):
        converter.convert(good_q[:6], good_a)
    with pytest.raises(ValueError, match="q_current must be finite"):
        converter.convert(np.where(np.arange(7) == 2, np.nan, good_q), good_a)
    with pytest.raises(ValueError, match=r"action .* must have shape \(7,\)"):
        converter.convert(good_q, np.zeros(8))
    with pytest.raises(ValueError, match="action .* must be finite"):
        converter.convert(good_q, [0, 0, np.inf, 0, 0, 0, 0])
    assert converter.goal_rot is None, "a refused action leaves no state behind"
    with pytest.raises(ValueError, match=r"q must have shape \(7,\)"):
        kin.fk(np.zeros((7, 1)))
    with pytest.raises(ValueError, match="q must be finite"):
        kin.jacobian([np.nan] * 7)
    with pytest.raises(ValueError, match="target_rot is not a rotation"):
        kin.ik(np.zeros(3), 2 * np.eye(3), good_q)
    with pytest.raises(ValueError, match="target_pos must be finite"):
        kin.ik([0, np.nan, 0], np.eye(3), good_q)
    with pytest.raises(ValueError, match="base_quat"):
        PandaKinematics(base_quat=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="pos_scale"):
        OscDeltaConfig(pos_scale=0.0)


def test_ee_goals_are_clipped_into_the_goal_box_before_ik(kin):
    q0 = np.array([0.0, 0.196, 0.0, -2.618, 0.0, 2.94, 0.785])
    base_pos0, _ = kin.fk(q0)
    local0 = kin.base_rot.T @ (base_pos0 - kin.base_pos)  # grip site in the base frame
    box_max = tuple(local0 + np.array([0.02, 0.5, 0.5]))  # 2 cm of room ahead in x
    converter = EEDeltaToJoint(kin, OscDeltaConfig(goal_box_min=(-1.0, -1.0, -1.0), goal_box_max=box_max))
    q = q0
    for _ in range(4):  # +x at full scale: 5 cm per step, far past the box wall
        q, _ = converter.convert(q, np.array([1.0, 0, 0, 0, 0, 0, -1.0]))
    local = kin.base_rot.T @ (kin.fk(q)[0] - kin.base_pos)
    assert local[0] == pytest.approx(box_max[0], abs=1e-4), "the arm stops at the wall"
    assert converter.goals_clipped == 4  # every step: the first already asks for 5 cm with 2 cm of room
    free = EEDeltaToJoint(kin)
    q_free, _ = free.convert(q0, np.array([1.0, 0, 0, 0, 0, 0, -1.0]))
    assert kin.base_rot.T @ (kin.fk(q_free)[0] - kin.base_pos) @ np.array([1, 0, 0]) > box_max[0] + 0.02
    with pytest.raises(ValueError, match="both goal_box_min and goal_box_max"):
        OscDeltaConfig(goal_box_min=(0, 0, 0))
