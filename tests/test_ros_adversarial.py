"""A hostile robot side against a running policy node (separate processes, real DDS).

The fake Franka here lies the way broken or misconfigured hardware does: duplicated joint
names, clocks skewed either way, frames stamped an hour ahead, poses outside the joint limits,
an arm that jumps, NaN fingers, frames of the wrong size. Each phase checks that the node
holds and says why (event, diagnostics); the whole run checks what reached the arm: every
point inside the FR3 limits, reachable from the true pose when it arrived, each segment within
the velocity limit, and each safety event published exactly once.
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from test_ros_policy_node import IMAGE, domain, make_checkpoint, positions, start_policy_node

from hardware.franka.limits import FR3
from vla_ros.fake_franka import REALSENSE_COLOR, FakeFranka
from vla_ros.ros_util import stop_process_group

# Staleness limits loose enough for a loaded 2-core CI machine, tight enough for a test.
TIMING = {"safety.stale_image_s": 2.0, "safety.stale_joint_state_s": 2.0, "max_latency_s": 2.0}
VELOCITY_SCALE = 0.5


@pytest.fixture
def hostile(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "wild", -6.0, 6.0)
    d = domain()
    robot = FakeFranka(d, cameras={REALSENSE_COLOR: IMAGE}, image_hz=20.0)
    proc = start_policy_node(d, tmp_path, checkpoint=checkpoint, **TIMING, **{"safety.velocity_scale": VELOCITY_SCALE})
    yield robot, proc
    robot.close()
    code = stop_process_group(proc)
    print((tmp_path / f"policy_node_{d}.log").read_text()[-4000:])
    assert code in (0, -signal.SIGINT), f"policy node exited with {code}"


def recover(robot: FakeFranka) -> None:
    """Honest inputs again, reset, enable, and wait until policy trajectories flow."""
    robot.joint_state_hook = None
    robot.image_stamp_offset_s = 0.0
    time.sleep(0.3)
    robot.wait_for(lambda: robot.call("reset").success and robot.call("enable").success, 20, "reset + enable")
    n = len(robot.trajectories)
    robot.wait_for(lambda: len(robot.trajectories) >= n + 3, 30, "policy trajectories after enable")


def wait_event(robot: FakeFranka, since: int, kind: str, text: str = "", timeout_s: float = 15.0) -> dict:
    def found():
        return next((e for e in robot.events[since:] if e["kind"] == kind and text in e["detail"]), None)

    robot.wait_for(lambda: found() is not None, timeout_s, f"a {kind!r} event mentioning {text!r}")
    return found()


def not_acting(robot: FakeFranka) -> bool:
    return robot.diagnostics.get("state") != "enabled"


def test_hostile_robot_streams_never_reach_the_arm(hostile):
    robot, proc = hostile
    robot.wait_for(lambda: robot.diagnostics, 60, "the node's diagnostics")
    recover(robot)

    # 1. a joint named twice, the second value 1 rad away: refused, the arm holds
    n = len(robot.events)
    robot.joint_state_hook = lambda names, q, t: (names + ["fr3_joint1"], q + [q[0] + 1.0], t)
    wait_event(robot, n, "bad_joint_state", "repeated")
    robot.wait_for(lambda: not_acting(robot), 10, "the node to stop acting")
    recover(robot)

    # 2. joint states stamped 0.3 s ahead (clock skew): refused; inference survives it
    n = len(robot.events)
    robot.joint_state_hook = lambda names, q, t: (names, q, t + 0.3)
    wait_event(robot, n, "bad_joint_state", "ahead of the node's clock")
    robot.wait_for(lambda: not_acting(robot), 10, "the node to stop acting")
    recover(robot)  # trajectories flow again: the inference thread is alive

    # 3. frames stamped an hour ahead: they never count as fresh, the watchdog latches
    n = len(robot.events)
    robot.image_stamp_offset_s = 3600.0
    wait_event(robot, n, "bad_image_stamp", "ahead of the node's clock")
    robot.wait_for(lambda: "scene" in robot.diagnostics.get("latched", ""), 20, "the stale-camera latch")
    recover(robot)

    # 4. a measured pose outside the joint limits: refused and latched; holds stay inside the limits
    n = len(robot.events)
    robot.joint_state_hook = lambda names, q, t: (names, [3.0, *q[1:]], t)
    wait_event(robot, n, "measured_outside_limits", "fr3_joint1")
    robot.wait_for(lambda: "outside" in robot.diagnostics.get("latched", ""), 10, "the limit latch in diagnostics")
    recover(robot)

    # 5. the measured arm jumps 0.6 rad away from the command: a tracking fault, latched
    n = len(robot.events)
    robot.joint_state_hook = lambda names, q, t: (names, [q[0] + 0.6, *q[1:]], t)
    wait_event(robot, n, "tracking", "fr3_joint1")
    robot.wait_for(lambda: "commanded" in robot.diagnostics.get("latched", ""), 10, "the tracking latch")
    recover(robot)

    # 6. NaN finger positions: the node says it is not acting, then holds after the stall limit
    n = len(robot.events)
    robot.joint_state_hook = lambda names, q, t: (names, [*q[:7], float("nan"), 0.04], t)
    wait_event(robot, n, "bad_joint_state", "finger")
    robot.wait_for(lambda: not_acting(robot), 10, "the node to stop acting")
    recover(robot)

    # 7. frames of the wrong size (one far too large): refused before conversion, then a stall hold
    n, refused = len(robot.events), int(robot.diagnostics.get("safety.malformed_image", 0))
    robot.publish_images = False
    for _ in range(5):
        robot.publish_frame(64, 64)
        robot.publish_frame(1500, 1500)
        time.sleep(0.1)
    robot.wait_for(  # a reliable depth-2 subscription may drop some of the large ones on the way
        lambda: int(robot.diagnostics.get("safety.malformed_image", 0)) >= refused + 5, 15, "5 refused frames"
    )
    robot.wait_for(lambda: not_acting(robot), 20, "the node to stop acting without frames")
    robot.publish_images = True
    recover(robot)
    assert proc.poll() is None

    # ---- what reached the arm over the whole run
    v_hw = FR3.dq_max
    first_speeds, segment_speeds, motions, holds = [0.0], [0.0], 0, 0
    for q_true, msg in robot.received:
        p = positions(msg)
        t = np.array([pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9 for pt in msg.points])
        assert np.all(np.isfinite(p)) and np.all(p >= FR3.q_min) and np.all(p <= FR3.q_max), p
        first_speed = np.abs(p[0] - q_true) / t[0]
        assert np.all(first_speed <= v_hw + 1e-6), f"first point implies {first_speed.max():.2f} rad/s"
        first_speeds.append(float(np.max(first_speed / v_hw)))
        if len(p) > 1:
            speed = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]
            assert np.all(speed <= VELOCITY_SCALE * v_hw + 1e-6), f"a segment at {speed.max():.2f} rad/s"
            segment_speeds.append(float(np.max(speed / v_hw)))
        motions, holds = motions + (len(p) > 1), holds + (len(p) == 1)
    seqs = [e["seq"] for e in robot.events if e.get("seq")]
    assert seqs == sorted(set(seqs)), "an event was published twice or out of order"
    assert len(robot.events) < 2000, f"{len(robot.events)} events: a stream of repeats"
    kinds: dict[str, int] = {}
    for e in robot.events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    summary = {
        "trajectories": len(robot.received),
        "motion_trajectories": motions,
        "hold_trajectories": holds,
        "max_first_point_speed_over_dq_max": round(max(first_speeds), 3),
        "max_segment_speed_over_dq_max": round(max(segment_speeds), 3),
        "events": len(robot.events),
        "events_with_seq_published_twice": len(seqs) - len(set(seqs)),
        "event_kinds": dict(sorted(kinds.items())),
    }
    print("hostile robot summary:", json.dumps(summary))


def test_a_stalled_policy_holds_and_says_why(tmp_path):
    """Every chunk arrives later than max_latency_s (a slow model): the node must not sit
    ENABLED doing nothing; it reports why, then holds once the stall outlasts its limit."""
    checkpoint = make_checkpoint(tmp_path / "wild", -6.0, 6.0)
    d = domain()
    robot = FakeFranka(d, cameras={REALSENSE_COLOR: IMAGE}, image_hz=20.0)
    params = {**TIMING, "max_latency_s": 0.0005}
    proc = start_policy_node(d, tmp_path, checkpoint=checkpoint, **params)
    try:
        robot.wait_for(lambda: robot.diagnostics, 60, "the node's diagnostics")
        robot.wait_for(lambda: robot.call("enable").success, 20, "enable")
        stalled = wait_event(robot, 0, "stalled", "chunks arrive too late")
        assert stalled["detail"].startswith("no new chunk for")
        robot.wait_for(lambda: robot.diagnostics.get("state") == "hold", 10, "the hold in diagnostics")
        assert all(len(t.points) == 1 for t in robot.trajectories), "policy motion from chunks that came too late"
        assert any(e["kind"] == "not_acting" for e in robot.events)
    finally:
        robot.close()
        code = stop_process_group(proc)
        print((tmp_path / f"policy_node_{d}.log").read_text()[-3000:])
    assert code in (0, -signal.SIGINT), f"policy node exited with {code}"


def test_the_inference_loop_outlives_an_unexpected_error():
    """A bug anywhere in one inference step (here a KeyError) latches the arm with the reason and
    the loop goes on: it once died silently while diagnostics kept saying `enabled`."""
    import logging
    from types import SimpleNamespace

    from hardware.action_chunks import ChunkScheduler
    from hardware.safety import SafetyConfig, SafetyLayer, SafetyState
    from vla_ros.policy_node import PolicyNode

    node = PolicyNode.__new__(PolicyNode)  # the real loop, without DDS or a model
    steps: list[int] = []

    def step():
        steps.append(1)
        if len(steps) == 1:
            raise KeyError("a bug")
        node.running = False

    node._inference_step = step
    node.running, node.scheduler, node.safety = True, ChunkScheduler(), SafetyLayer(SafetyConfig())
    node.node = SimpleNamespace(context=SimpleNamespace(ok=lambda: True))
    node.log, node.now = logging.getLogger("test"), lambda: 1.0
    node._inference_loop()
    assert len(steps) == 2, "the loop stopped after the error"
    assert node.safety.state is SafetyState.ESTOP and "KeyError" in node.safety.latched_reason
