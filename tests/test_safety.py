"""The Franka limits tables, the safety layer and the action-chunk scheduler (pure Python, no ROS)."""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pytest

from hardware.action_chunks import ChunkScheduler, ChunkSchedulerConfig, ensemble_weights
from hardware.franka.limits import FR3, PANDA, ROBOTS, get_limits
from hardware.safety import (
    SafetyConfig,
    SafetyLayer,
    SafetyState,
    braking_speed,
    check_limits,
    smooth_start_blend,
)
from vla.registry import UnknownNameError

NAMES = FR3.joint_names
HOME = FR3.home


def enabled_layer(t: float = 0.0, q: np.ndarray | None = None, fk=None, **config) -> SafetyLayer:
    """An FR3 layer that has seen a joint state at `t` and was enabled then (no smooth start unless asked)."""
    config.setdefault("smooth_start_s", 0.0)
    layer = SafetyLayer(SafetyConfig(**config), fk=fk)
    assert layer.observe_joint_state(NAMES, HOME if q is None else q, t)
    assert layer.enable(t), layer.events[-1]
    return layer


def ramp(target: np.ndarray, n: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.asarray(target, dtype=np.float64)[None, :], n, axis=0), dt * np.arange(1, n + 1)


# --------------------------------------------------------------------------------------------------
# limits tables
# --------------------------------------------------------------------------------------------------


def test_limit_tables_match_robot_md():
    assert FR3.joint_names == tuple(f"fr3_joint{i}" for i in range(1, 8))
    assert PANDA.joint_names == tuple(f"fer_joint{i}" for i in range(1, 8))
    assert FR3.q_min[0] == -2.7437 and FR3.q_max[3] == -0.1518 and FR3.q_min[5] == 0.5445
    assert FR3.q_max[5] == 4.5169 and FR3.q_max[6] == 3.0159
    assert FR3.dq_max.tolist() == [2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26]
    assert FR3.ddq_max.tolist() == [10.0] * 7 and FR3.jerk_max.tolist() == [5000.0] * 7
    assert PANDA.q_min[1] == -1.7628 and PANDA.q_max[3] == -0.0698 and PANDA.q_min[5] == -0.0175
    assert PANDA.q_max[5] == 3.7525
    assert PANDA.dq_max.tolist() == [2.175] * 4 + [2.61] * 3
    assert PANDA.ddq_max.tolist() == [15, 7.5, 10, 12.5, 15, 20, 20]
    assert PANDA.jerk_max.tolist() == [7500, 3750, 5000, 6250, 7500, 10000, 10000]
    np.testing.assert_allclose(FR3.home, [0, -math.pi / 4, 0, -3 * math.pi / 4, 0, math.pi / 2, math.pi / 4])
    assert get_limits("fr3") is FR3 and get_limits("panda") is PANDA and ROBOTS.names() == ["fr3", "panda"]
    with pytest.raises(ValueError):
        FR3.q_min[0] = 0.0  # shared tables are read-only


def test_unknown_robot_lists_what_exists():
    with pytest.raises(UnknownNameError, match=r"fr3, panda"):
        get_limits("ur5")
    with pytest.raises(UnknownNameError, match=r"fr3, panda"):
        SafetyConfig(robot="ur5")


def test_check_names_reorders_and_names_missing_joints():
    msg = ["fr3_finger_joint1", *reversed(NAMES), "fr3_finger_joint2"]
    idx = FR3.check_names(msg)
    values = np.array([100.0] + [7, 6, 5, 4, 3, 2, 1] + [200.0])
    assert values[idx].tolist() == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"missing \['fr3_joint3'\].*expected.*got"):
        FR3.check_names([n for n in NAMES if n != "fr3_joint3"])
    with pytest.raises(ValueError, match="missing"):
        FR3.check_names(PANDA.joint_names)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"velocity_scale": 0.0}, "velocity_scale"),
        ({"accel_scale": 1.5}, "accel_scale"),
        ({"max_step_rad": float("nan")}, "max_step_rad"),
        ({"workspace_min": (0.9, 0.0, 0.0), "workspace_max": (0.5, 1.0, 1.0)}, "workspace_min < workspace_max"),
        ({"workspace_min": (0.0, 0.0)}, "xyz"),
        ({"joint_margin_rad": 2.0}, "joint_margin_rad"),
        ({"cameras": ("wrist", "wrist")}, "cameras"),
        ({"smooth_start_s": -1.0}, "smooth_start_s"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyConfig(**kwargs)


def test_every_config_field_says_what_it_means():
    """The policy node's safety.* parameters are these fields: each one documents itself."""
    import dataclasses

    assert [f.name for f in dataclasses.fields(SafetyConfig) if not f.metadata.get("help")] == []


# --------------------------------------------------------------------------------------------------
# filtering
# --------------------------------------------------------------------------------------------------


def test_jump_larger_than_max_step_is_clamped_per_point():
    layer = enabled_layer()
    target = HOME.copy()
    target[0] += 1.0
    points, times = ramp(target, 3, 0.5)  # slow points: only max_step binds
    out = layer.filter_trajectory(NAMES, points, times, now=0.0)
    assert out is not None and layer.state is SafetyState.ENABLED
    np.testing.assert_allclose(out.positions[:, 0] - HOME[0], [0.05, 0.10, 0.15], atol=1e-12)
    np.testing.assert_array_equal(out.positions[:, 1:], np.repeat(HOME[None, 1:], 3, axis=0))
    assert any(m.startswith("max_step") for m in out.modifications)
    assert layer.counters["max_step"] == 1 and layer.events[-1].kind == "max_step"


def test_target_beyond_q_max_is_clipped_to_margin():
    layer = enabled_layer(max_step_rad=10.0, velocity_scale=1.0, accel_scale=1.0)
    target = HOME.copy()
    target[0], target[3] = 3.5, 0.5  # joint1 and joint4 beyond q_max
    points, times = ramp(target, 40, 0.5)
    out = layer.filter_trajectory(NAMES, points, times, now=0.0)
    assert out is not None
    hi = FR3.q_max - 0.05
    assert np.all(out.positions <= hi + 1e-12)
    np.testing.assert_allclose(out.positions[-1, [0, 3]], hi[[0, 3]], atol=1e-9)
    assert any(m.startswith("position_clipped") for m in out.modifications)
    assert check_limits(out.positions, out.times, FR3, 1.0, start=HOME) == []


def test_velocity_and_acceleration_limits_hold_on_random_trajectories():
    rng = np.random.default_rng(0)
    layer = enabled_layer(max_step_rad=1.0)  # let the velocity limit bind, not the step
    for k in range(10):
        now = 0.01 * k
        layer.observe_joint_state(NAMES, HOME, now)
        layer.reset(now)
        assert layer.enable(now)
        points = HOME + rng.uniform(-2.0, 2.0, size=(30, 7)).cumsum(axis=0) * 0.3
        times = 0.05 * np.arange(1, 31)
        assert check_limits(points, times, FR3, 0.5, start=HOME) != []  # the raw input violates
        out = layer.filter_trajectory(NAMES, points, times, now=now)
        assert out is not None
        assert check_limits(out.positions, out.times, FR3, 0.5, start=HOME) == []
        assert np.all(out.positions >= FR3.q_min + 0.05 - 1e-12) and np.all(out.positions <= FR3.q_max - 0.05 + 1e-12)
        v0 = (out.positions[0] - HOME) / 0.05  # from rest: the first step also respects the acceleration
        assert np.all(np.abs(v0) <= 0.5 * FR3.ddq_max * 0.05 + 1e-9)


def test_velocity_scaling_keeps_the_direction_of_the_step():
    layer = enabled_layer(max_step_rad=10.0, accel_scale=1.0)
    target = HOME.copy()
    target[0] += 1.0
    target[1] += 0.5
    out = layer.filter_trajectory(NAMES, target[None], np.array([0.5]), now=0.0)
    step = out.positions[0] - HOME
    np.testing.assert_allclose(step[:2], [0.5 * 2.62 * 0.5, 0.5 * 2.62 * 0.25], atol=1e-12)
    assert any(m.startswith("velocity") for m in out.modifications)


def test_approaching_a_limit_at_speed_brakes_within_the_acceleration_limit():
    start = HOME.copy()
    start[0] = FR3.q_max[0] - 0.4
    layer = enabled_layer(q=start)
    target = start.copy()
    target[0] = 3.5  # beyond q_max: the arm speeds up towards the limit and must stop before it
    out = layer.filter_trajectory(NAMES, *ramp(target, 60, 0.05), now=0.0)
    assert out is not None and any(m.startswith("braking") for m in out.modifications)
    assert np.max(out.positions[:, 0]) <= FR3.q_max[0] - 0.05 + 1e-12
    assert np.max(np.diff(out.positions[:, 0])) > 0.05 * 0.5  # it did get going
    assert check_limits(out.positions, out.times, FR3, 0.5, start=start) == []
    assert out.positions[-1, 0] == pytest.approx(FR3.q_max[0] - 0.05, abs=1e-3)


def test_braking_speed_stops_before_the_limit():
    a, dt = np.array([5.0]), 0.05
    q, v, limit = 0.0, 1.3, 0.3  # heading at 1.3 rad/s towards a limit 0.3 rad away
    for _ in range(200):
        v_next = min(v + a[0] * dt, float(braking_speed(np.array([limit - q]), a, dt)[0]))
        assert v_next >= v - a[0] * dt - 1e-12  # never needs more deceleration than allowed
        v = max(v_next, 0.0)
        q += v * dt
        assert q <= limit + 1e-12
    assert limit - q < 1e-3


def test_next_trajectory_continues_from_the_commanded_setpoint():
    layer = enabled_layer()
    target = HOME.copy()
    target[0] += 1.0
    first = layer.filter_trajectory(NAMES, *ramp(target, 20, 0.05), now=0.0)
    assert first is not None
    # 0.5 s later the first trajectory commands its 10th point; a new chunk starts from there
    setpoint = first.positions[9]
    layer.observe_joint_state(NAMES, setpoint, 0.5)
    second = layer.filter_trajectory(NAMES, *ramp(HOME - 1.0, 5, 0.05), now=0.5)
    assert second is not None
    assert np.max(np.abs(second.positions[0] - setpoint)) <= 0.05 + 1e-12
    assert (
        check_limits(
            np.vstack([first.positions[:10], second.positions]),
            np.concatenate([first.times[:10], 0.5 + second.times]),
            FR3,
            0.5,
            start=HOME,
        )
        == []
    )


def test_trajectory_in_another_joint_order_comes_out_in_robot_order():
    layer = enabled_layer()
    target = HOME.copy()
    target[6] += 0.01
    out = layer.filter_trajectory(list(reversed(NAMES)), target[None, ::-1], np.array([0.5]), now=0.0)
    assert out is not None and out.names == NAMES
    np.testing.assert_allclose(out.positions[0], target, atol=1e-12)
    assert out.modifications == []


@pytest.mark.parametrize(
    "names, points, times, kind",
    [
        (NAMES, np.full((2, 7), np.nan), [0.05, 0.1], "refused_nonfinite"),
        (NAMES, np.array([[np.inf] * 7]), [0.05], "refused_nonfinite"),
        (NAMES, np.zeros((2, 6)), [0.05, 0.1], "refused_shape"),
        (NAMES, np.zeros(7), [0.05], "refused_shape"),
        (NAMES, np.zeros((2, 7)), [0.05], "refused_shape"),
        (PANDA.joint_names, np.zeros((1, 7)), [0.05], "refused_joint_names"),
        ((*NAMES, "fr3_finger_joint1"), np.zeros((1, 8)), [0.05], "refused_joint_names"),
        (NAMES, np.zeros((2, 7)), [0.1, 0.1], "refused_times"),
        (NAMES, np.zeros((1, 7)), [0.0], "refused_times"),
    ],
)
def test_bad_trajectories_are_refused_and_the_arm_holds(names, points, times, kind, caplog):
    measured = HOME + 0.01
    layer = enabled_layer(q=measured)
    with caplog.at_level(logging.WARNING, logger="hardware.safety"):
        assert layer.filter_trajectory(names, points, np.asarray(times), now=0.0) is None
    assert layer.state is SafetyState.HOLD
    assert layer.counters[kind] == 1
    assert any(r.name == "hardware.safety" and kind in r.getMessage() for r in caplog.records)
    hold = layer.hold_trajectory(now=0.0)
    assert hold.names == NAMES and hold.positions.shape == (1, 7)
    np.testing.assert_array_equal(hold.positions[0], measured)
    # a held layer refuses further trajectories until enabled again
    assert layer.filter_trajectory(NAMES, measured[None], np.array([0.05]), now=0.01) is None
    assert layer.enable(0.02) and layer.filter_trajectory(NAMES, measured[None], np.array([0.05]), now=0.02) is not None


def test_bad_joint_states_are_refused_and_keep_the_last_good_pose():
    layer = enabled_layer()
    assert not layer.observe_joint_state(NAMES, [np.nan] * 7, 0.01)
    assert layer.state is SafetyState.HOLD
    assert not layer.observe_joint_state(NAMES, [0.0] * 6, 0.01)
    assert not layer.observe_joint_state(NAMES[:6], [0.0] * 6, 0.01)
    assert layer.counters["bad_joint_state"] == 3
    np.testing.assert_array_equal(layer.measured_pose, HOME)
    # extra gripper joints in a merged /joint_states are fine and reordered
    msg_names = ["fr3_finger_joint1", *reversed(NAMES)]
    assert layer.observe_joint_state(msg_names, [0.04, *reversed(HOME + 0.1)], 0.02)
    np.testing.assert_allclose(layer.measured_pose, HOME + 0.1)


def test_not_enabled_is_refused():
    layer = SafetyLayer(SafetyConfig())
    layer.observe_joint_state(NAMES, HOME, 0.0)
    assert layer.filter_trajectory(NAMES, HOME[None], np.array([0.05]), now=0.0) is None
    assert layer.state is SafetyState.DISABLED and layer.counters["refused_not_enabled"] == 1
    empty = SafetyLayer(SafetyConfig())
    result = empty.enable(0.0)
    assert not result and "no joint state" in result.message
    with pytest.raises(RuntimeError, match="no joint state"):
        empty.hold_trajectory(0.0)


def test_workspace_box_refuses_the_whole_trajectory():
    def fk(q: np.ndarray) -> np.ndarray:  # x grows with joint1; home is at x = 0.5
        return np.array([0.5 + 0.1 * q[0], 0.0, 0.4])

    layer = enabled_layer(fk=fk, workspace_max=(0.55, 0.6, 0.9))
    inside = HOME.copy()
    inside[0] = 0.3
    assert layer.filter_trajectory(NAMES, *ramp(inside, 20, 0.5), now=0.0) is not None
    outside = HOME.copy()
    outside[0] = 1.0  # reached after a few clamped steps: x = 0.5 + 0.1 * q1 > 0.55 once q1 > 0.5
    assert layer.filter_trajectory(NAMES, *ramp(outside, 20, 0.5), now=0.0) is None
    assert layer.state is SafetyState.HOLD and layer.counters["refused_workspace"] == 1
    assert "outside the workspace box" in layer.events[-2].detail
    assert layer.describe()["workspace_check"] == "on"
    assert "skipped" in SafetyLayer(SafetyConfig()).describe()["workspace_check"]

    broken = enabled_layer(fk=lambda q: np.array([np.nan, 0.0, 0.0]))
    assert broken.filter_trajectory(NAMES, HOME[None], np.array([0.05]), now=0.0) is None
    assert "fk returned" in broken.events[-2].detail


def test_smooth_start_begins_exactly_at_the_measured_pose():
    measured = HOME + 0.02
    target = HOME + 0.3
    np.testing.assert_array_equal(smooth_start_blend(measured, target, 0.0, 2.0), measured)
    np.testing.assert_array_equal(smooth_start_blend(measured, target, 2.0, 2.0), target)

    layer = enabled_layer(q=measured, smooth_start_s=2.0)
    points, times = ramp(target, 60, 0.05)  # 3 s: past the smooth start
    out = layer.filter_trajectory(NAMES, points, times, now=0.0)
    assert out is not None
    np.testing.assert_allclose(out.positions[0], smooth_start_blend(measured, target, 0.05, 2.0), atol=1e-12)
    first_jump = np.max(np.abs(out.positions[0] - measured))
    assert 0 < first_jump < 1e-3
    assert check_limits(out.positions, out.times, FR3, 0.5, start=measured) == []
    np.testing.assert_allclose(out.positions[-1], target, atol=1e-9)  # reached after the blend
    assert any(m.startswith("smooth_start: 39 of 60") for m in out.modifications)

    # without a smooth start the same request jumps much further (only rate-limited)
    plain = enabled_layer(q=measured)
    jump = np.max(np.abs(plain.filter_trajectory(NAMES, points, times, now=0.0).positions[0] - measured))
    assert jump > 10 * first_jump


# --------------------------------------------------------------------------------------------------
# state machine: watchdog, estop, reset
# --------------------------------------------------------------------------------------------------


def test_stale_joint_state_latches_until_reset():
    layer = enabled_layer()
    assert layer.check_watchdog(0.05)
    assert not layer.check_watchdog(0.2)
    assert layer.state is SafetyState.HOLD and "joint state stale" in layer.latched_reason
    layer.observe_joint_state(NAMES, HOME, 0.2)  # fresh data again does not clear the latch
    assert not layer.check_watchdog(0.2)
    refused = layer.enable(0.2)
    assert not refused and "reset()" in refused.message
    assert layer.filter_trajectory(NAMES, HOME[None], np.array([0.05]), now=0.2) is None
    assert layer.reset(0.2) and layer.state is SafetyState.DISABLED and layer.latched_reason is None
    assert layer.enable(0.2) and layer.state is SafetyState.ENABLED
    assert layer.filter_trajectory(NAMES, HOME[None], np.array([0.05]), now=0.2) is not None


def test_stale_data_while_disabled_does_not_latch_and_blocks_enable():
    layer = SafetyLayer(SafetyConfig())
    assert not layer.check_watchdog(0.0)
    assert layer.latched_reason is None
    layer.observe_joint_state(NAMES, HOME, 0.0)
    result = layer.enable(0.5)
    assert not result and "joint state stale" in result.message


def test_stale_image_latches_until_reset():
    layer = SafetyLayer(SafetyConfig(cameras=("wrist", "scene"), smooth_start_s=0.0))
    layer.observe_joint_state(NAMES, HOME, 0.0)
    layer.observe_image("wrist", 0.0)
    result = layer.enable(0.0)
    assert not result and "no image from camera 'scene'" in result.message
    layer.observe_image("scene", 0.0)
    assert layer.enable(0.0)
    with pytest.raises(ValueError, match="unknown camera 'top'.*wrist, scene"):
        layer.observe_image("top", 0.0)
    for t in (0.1, 0.2, 0.3):
        layer.observe_joint_state(NAMES, HOME, t)
        layer.observe_image("wrist", t)
    assert not layer.check_watchdog(0.3)  # scene last seen at 0.0
    assert "camera 'scene' stale" in layer.latched_reason and layer.state is SafetyState.HOLD
    layer.observe_image("scene", 0.3)
    assert not layer.enable(0.3)
    assert layer.reset(0.3) and layer.enable(0.3)
    assert layer.counters["watchdog"] == 1


def test_estop_latches_and_only_reset_clears_it():
    layer = enabled_layer()
    assert layer.estop("operator pressed stop", now=0.01)
    assert layer.state is SafetyState.ESTOP and "operator pressed stop" in layer.latched_reason
    assert not layer.enable(0.02)
    assert not layer.disable(0.02)
    assert layer.filter_trajectory(NAMES, HOME[None], np.array([0.05]), now=0.02) is None
    assert layer.state is SafetyState.ESTOP
    np.testing.assert_array_equal(layer.hold_trajectory(0.02).positions[0], HOME)
    info = layer.describe(now=0.02)
    assert info["state"] == "estop" and info["counters"]["estop"] == 1
    assert layer.reset(0.03) and layer.state is SafetyState.DISABLED
    assert layer.enable(0.03) and layer.state is SafetyState.ENABLED


# --------------------------------------------------------------------------------------------------
# check_limits
# --------------------------------------------------------------------------------------------------


def test_check_limits_reports_each_kind():
    t = 0.01 * np.arange(1, 6)
    slow = np.repeat(HOME[None], 5, axis=0) + 0.001 * np.arange(5)[:, None]
    assert check_limits(slow, t, FR3) == []
    fast = slow.copy()
    fast[:, 0] = HOME[0] + np.array([0.0, 0.03, 0.0, 0.0, 0.0])  # 3 rad/s, huge acceleration and jerk
    report = check_limits(fast, t, FR3)
    kinds = {line.split(":")[0] for line in report}
    assert kinds == {"velocity", "acceleration", "jerk"}
    assert all("fr3_joint1" in line for line in report)
    beyond = slow.copy()
    beyond[2, 3] = 0.0  # joint4 must stay below -0.1518
    assert any(line.startswith("position: fr3_joint4") for line in check_limits(beyond, t, FR3))
    with pytest.raises(ValueError, match="strictly increasing"):
        check_limits(slow, t[::-1], FR3)
    with pytest.raises(ValueError, match=r"\(N, 7\)"):
        check_limits(slow[:, :6], t, FR3)


# --------------------------------------------------------------------------------------------------
# ChunkScheduler
# --------------------------------------------------------------------------------------------------


def chunk(h: int, offset: float = 0.0, dim: int = 2) -> np.ndarray:
    return offset + np.repeat(np.arange(h, dtype=np.float64)[:, None], dim, axis=1)


def test_actions_whose_time_passed_are_dropped():
    sched = ChunkScheduler(ChunkSchedulerConfig(control_dt=0.1, n_action_steps=4, max_latency_s=1.0))
    assert sched.add_chunk(chunk(8), obs_stamp=0.0, now=0.25)  # 0.25 s of inference latency
    assert sched.counters["dropped_late"] == 2  # actions for 0.0 and 0.1 are over
    assert sched.action_at(0.25).tolist() == [2.0, 2.0]  # the action for the 0.2 tick
    assert sched.action_at(0.3).tolist() == [3.0, 3.0]
    assert sched.action_at(0.79).tolist() == [7.0, 7.0]
    assert sched.action_at(0.8) is None  # chunk exhausted: the node holds
    assert sched.counters["executed"] == 3
    assert not sched.add_chunk(chunk(8), obs_stamp=0.0, now=0.85)  # every action already past
    assert sched.counters["dropped_late"] == 10


def test_executes_k_actions_then_asks_for_inference():
    cfg = ChunkSchedulerConfig(control_dt=0.1, n_action_steps=3, max_latency_s=0.5)
    sched = ChunkScheduler(cfg)
    assert sched.needs_inference(0.0)
    sched.mark_requested()
    assert not sched.needs_inference(0.0)
    with pytest.raises(RuntimeError, match="in flight"):
        sched.mark_requested()
    assert sched.add_chunk(chunk(8), obs_stamp=0.0, now=0.0)
    assert not sched.in_flight
    executed = []
    for tick in range(8):
        now = tick * 0.1
        executed.append(sched.action_at(now)[0])
        if sched.needs_inference(now):
            break
    assert executed == [0.0, 1.0, 2.0]  # k = 3 actions, then a new chunk is wanted
    sched.mark_requested()
    # the new chunk (observation at 0.2, arriving at 0.25) replaces the rest of the old one
    assert sched.add_chunk(chunk(8, offset=100.0), obs_stamp=0.2, now=0.25)
    assert sched.action_at(0.3)[0] == 101.0
    assert sched.counters["executed"] == 4 and sched.counters["chunks_added"] == 2
    sched.mark_requested()
    sched.cancel_request()  # inference failed: a new request is allowed
    assert not sched.in_flight


def test_temporal_ensembling_matches_hand_computation():
    m = 0.5
    cfg = ChunkSchedulerConfig(control_dt=1.0, n_action_steps=1, temporal_ensemble=m, max_latency_s=0.5)
    sched = ChunkScheduler(cfg)
    sched.add_chunk([[0.0], [10.0], [20.0], [30.0]], obs_stamp=0.0, now=0.0)
    sched.add_chunk([[100.0], [110.0], [120.0], [130.0]], obs_stamp=1.0, now=1.0)
    sched.add_chunk([[200.0], [210.0], [220.0], [230.0]], obs_stamp=2.0, now=2.0)
    # at t = 2 the chunks give 20 (oldest, weight 1), 110 (weight e^-0.5) and 200 (weight e^-1)
    w0, w1, w2 = 1.0, math.exp(-0.5), math.exp(-1.0)
    expected = (20.0 * w0 + 110.0 * w1 + 200.0 * w2) / (w0 + w1 + w2)
    assert sched.action_at(2.0)[0] == pytest.approx(expected, rel=1e-12)
    assert sched.action_at(3.0)[0] == pytest.approx((30.0 * w0 + 120.0 * w1 + 210.0 * w2) / (w0 + w1 + w2))
    np.testing.assert_allclose(ensemble_weights(3, m), np.array([w0, w1, w2]) / (w0 + w1 + w2))
    plain = ChunkScheduler(ChunkSchedulerConfig(control_dt=1.0, n_action_steps=1, max_latency_s=0.5))
    plain.add_chunk([[0.0], [10.0], [20.0]], obs_stamp=0.0, now=0.0)
    plain.add_chunk([[100.0], [110.0], [120.0]], obs_stamp=1.0, now=1.0)
    assert plain.action_at(2.0)[0] == 110.0  # without ensembling the newest chunk wins


def test_stale_chunk_is_refused():
    sched = ChunkScheduler(ChunkSchedulerConfig(control_dt=0.05, n_action_steps=4, max_latency_s=0.2))
    sched.mark_requested()
    assert not sched.add_chunk(chunk(8), obs_stamp=1.0, now=1.3)
    assert sched.counters["stale_chunks"] == 1 and not sched.in_flight
    assert sched.action_at(1.3) is None


@pytest.mark.parametrize(
    "actions, stamp, now, message",
    [
        (np.full((8, 2), np.nan), 0.0, 0.0, "NaN"),
        (np.zeros(8), 0.0, 0.0, r"\(H, A\)"),
        (np.zeros((2, 2)), 0.0, 0.0, "n_action_steps"),
        (np.zeros((8, 2)), 1.0, 0.0, "after now"),
        (np.zeros((8, 3)), 0.0, 0.0, "action dim 3 differs"),
    ],
)
def test_chunk_validation(actions, stamp, now, message):
    sched = ChunkScheduler(ChunkSchedulerConfig(control_dt=0.05, n_action_steps=4))
    sched.add_chunk(np.zeros((8, 2)), 0.0, 0.0)
    with pytest.raises(ValueError, match=message):
        sched.add_chunk(actions, stamp, now)


@pytest.mark.parametrize(
    "kwargs", [{"control_dt": 0.0}, {"n_action_steps": 0}, {"temporal_ensemble": -1.0}, {"max_latency_s": float("inf")}]
)
def test_scheduler_config_validation(kwargs):
    with pytest.raises(ValueError):
        ChunkSchedulerConfig(**kwargs)


def test_scheduler_is_safe_across_threads():
    sched = ChunkScheduler(ChunkSchedulerConfig(control_dt=0.001, n_action_steps=4, max_latency_s=10.0))
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for i in range(300):
                sched.add_chunk(chunk(16, offset=i), obs_stamp=i * 0.004, now=i * 0.004)
        except BaseException as err:  # pragma: no cover - surfaced below
            errors.append(err)

    thread = threading.Thread(target=producer)
    thread.start()
    got = 0
    for i in range(1200):
        if sched.action_at(i * 0.001) is not None:
            got += 1
    thread.join()
    assert not errors
    assert sched.counters["executed"] == got and sched.counters["chunks_added"] == 300
