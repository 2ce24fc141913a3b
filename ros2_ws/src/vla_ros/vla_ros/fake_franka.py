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
        self.node.create_subscription(JointTrajectory, f"/{controller}/joint_trajectory", self.trajectories.append, 50)
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
        if self.abort_goals:  # what a JointTrajectoryController answers when its hardware went away
            goal_handle.abort()
            return FollowJointTrajectory.Result(
                error_code=FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED,
                error_string="hardware interface deactivated",
            )
        goal_handle.succeed()
        return FollowJointTrajectory.Result(error_code=FollowJointTrajectory.Result.SUCCESSFUL)

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
        msg = self.JointState(name=self.arm_names + self.finger_names, position=[*map(float, self.q), 0.04, 0.04])
        msg.header.stamp = self._stamp()
        self.joint_pub.publish(msg)

    def _publish_images(self):
        if not self.publish_images:
            return
        stamp = self._stamp()
        for topic, (h, w, c) in self.cameras.items():
            msg = self.Image(height=h, width=w, encoding="rgb8", step=w * c)
            msg.header.stamp = stamp
            data = self._pixels[topic]
            msg.data = data[:-7] if self.malformed_images else data
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
