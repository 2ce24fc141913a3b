"""A stand-in for the two things a policy node talks to that cannot exist here: a Franka's
controller side (``/joint_states`` out; the JointTrajectoryController's topic and, on request,
its FollowJointTrajectory action in) and RealSense colour streams. Used by the policy-node
tests and by ``vla_ros.latency_bench``.

It runs on its own rclpy context and spin thread, publishes at the real rates (joint states
100 Hz, images 30 Hz by default) with the real message types and topic names, and records what
the node sends (trajectories, goals, events, diagnostics) for the caller to check.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from hardware.franka.limits import FR3
from vla_ros.ros_util import s_to_stamp

REALSENSE_COLOR = "/camera/camera/color/image_raw"


class FakeFranka:
    """Publishes /joint_states and camera images; records the policy node's outputs."""

    def __init__(
        self,
        domain_id: int,
        *,
        arm_id: str = "fr3",
        controller: str = "fr3_arm_controller",
        cameras: dict[str, Sequence[int]] | None = None,
        joint_hz: float = 100.0,
        image_hz: float = 30.0,
        trajectory_action: bool = False,
        q0: np.ndarray | None = None,
        track: bool = True,
    ):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("fake_franka", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.arm_names = [f"{arm_id}_joint{i}" for i in range(1, 8)]
        self.finger_names = [f"{arm_id}_finger_joint1", f"{arm_id}_finger_joint2"]
        self.q = (FR3.home if q0 is None else np.asarray(q0, dtype=np.float64)).copy()
        self.cameras = {topic: tuple(shape) for topic, shape in (cameras or {REALSENSE_COLOR: (32, 32, 3)}).items()}
        self.publish_images = True
        self.malformed_images = False
        # hostile-input hooks (tests/test_ros_adversarial.py): rewrite each joint state before it is
        # sent, shift image stamps; `received` keeps the true pose at each trajectory's arrival
        self.joint_state_hook = None  # (names, positions, stamp_s) -> (names, positions, stamp_s)
        self.image_stamp_offset_s = 0.0
        self.received: list[tuple[np.ndarray, object]] = []
        self.trajectories: list = []
        self.goals: list = []  # FollowJointTrajectory goals, as a JointTrajectoryController receives them
        self.abort_goals = False
        self.events: list[dict] = []
        self.diagnostics: dict[str, str] = {}
        self.Image, self.JointState, self.Trigger = Image, JointState, Trigger
        rng = np.random.default_rng(0)
        self._pixels = {
            topic: rng.integers(0, 255, int(np.prod(shape)), dtype=np.uint8).tobytes()
            for topic, shape in self.cameras.items()
        }
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.image_pubs = {topic: self.node.create_publisher(Image, topic, 10) for topic in self.cameras}
        self.track = track  # follow the received trajectories, as a JointTrajectoryController does
        self._following: tuple[float, np.ndarray, np.ndarray] | None = None  # (start s, knot times, knots)
        self.node.create_subscription(JointTrajectory, f"/{controller}/joint_trajectory", self._on_trajectory, 50)
        self.node.create_subscription(
            String, "/vla/policy_events", lambda m: self.events.append(json.loads(m.data)), 50
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_timer(1.0 / joint_hz, self._publish_joints)
        self.node.create_timer(1.0 / image_hz, self._publish_images)
        self.clients = {s: self.node.create_client(Trigger, f"/vla_policy/{s}") for s in ("enable", "estop", "reset")}
        if trajectory_action:  # only when asked: an action server slows this single-threaded executor down
            from control_msgs.action import FollowJointTrajectory
            from rclpy.action import ActionServer

            self.action_server = ActionServer(
                self.node, FollowJointTrajectory, f"/{controller}/follow_joint_trajectory", self._execute_goal
            )
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _execute_goal(self, goal_handle):
        from control_msgs.action import FollowJointTrajectory

        self.goals.append(goal_handle.request.trajectory)
        self._follow(goal_handle.request.trajectory)
        if self.abort_goals:  # what a JointTrajectoryController answers when its hardware went away
            goal_handle.abort()
            return FollowJointTrajectory.Result(
                error_code=FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED,
                error_string="hardware interface deactivated",
            )
        goal_handle.succeed()
        return FollowJointTrajectory.Result(error_code=FollowJointTrajectory.Result.SUCCESSFUL)

    def _on_trajectory(self, msg) -> None:
        if self.track:
            self.q = self._pose_now(self.node.get_clock().now().nanoseconds * 1e-9)
        self.received.append((self.q.copy(), msg))
        self.trajectories.append(msg)
        self._follow(msg)

    def _follow(self, msg) -> None:
        """Linear interpolation from the current pose through the points, from the header stamp on."""
        if not self.track or not msg.points or len(msg.joint_names) != 7:
            return
        try:
            order = [list(msg.joint_names).index(n) for n in self.arm_names]
        except ValueError:
            return
        now = self.node.get_clock().now().nanoseconds * 1e-9
        start = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 or now
        times = [0.0] + [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        knots = [self._pose_now(now)] + [np.array([p.positions[i] for i in order]) for p in msg.points]
        self._following = (start, np.array(times), np.array(knots))

    def _pose_now(self, now: float) -> np.ndarray:
        if self._following is None:
            return self.q.copy()
        start, times, knots = self._following
        t = min(max(now - start, 0.0), times[-1])
        return np.array([np.interp(t, times, knots[:, j]) for j in range(7)])

    def _spin(self):
        while self.running:
            self.executor.spin_once(timeout_sec=0.01)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name == "vla_policy":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _stamp(self):
        return self.node.get_clock().now().to_msg()

    def _publish_joints(self):
        if self.track:
            self.q = self._pose_now(self.node.get_clock().now().nanoseconds * 1e-9)
        names, positions = self.arm_names + self.finger_names, [*map(float, self.q), 0.04, 0.04]
        stamp = self.node.get_clock().now().nanoseconds * 1e-9
        if self.joint_state_hook is not None:
            names, positions, stamp = self.joint_state_hook(list(names), list(positions), stamp)
        msg = self.JointState(name=names, position=positions)
        msg.header.stamp = s_to_stamp(stamp)
        self.joint_pub.publish(msg)

    def _publish_images(self):
        if not self.publish_images:
            return
        stamp = s_to_stamp(self.node.get_clock().now().nanoseconds * 1e-9 + self.image_stamp_offset_s)
        for topic, (h, w, c) in self.cameras.items():
            msg = self.Image(height=h, width=w, encoding="rgb8", step=w * c)
            msg.header.stamp = stamp
            data = self._pixels[topic]
            msg.data = data[:-7] if self.malformed_images else data
            self.image_pubs[topic].publish(msg)

    def publish_frame(self, height: int, width: int, topic: str = REALSENSE_COLOR) -> None:
        """One frame of any size (e.g. far larger than the camera's) on a camera topic."""
        msg = self.Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.header.stamp = self._stamp()
        msg.data = bytes(height * width * 3)
        self.image_pubs[topic].publish(msg)

    def call(self, service: str, timeout_s: float = 10.0):
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=timeout_s), f"/vla_policy/{service} not available"
        future = client.call_async(self.Trigger.Request())
        end = time.monotonic() + timeout_s
        while not future.done():
            assert time.monotonic() < end, f"/vla_policy/{service} timed out"
            time.sleep(0.01)
        return future.result()

    def wait_for(self, predicate, timeout_s: float, what: str):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.05)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        raise AssertionError(f"timed out waiting for {what} after {timeout_s} s (load average {load})")

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        self.node.destroy_node()
        import rclpy

        rclpy.shutdown(context=self.context)
