"""The simulated Franka node in its own process, through franka_ros2's interfaces over DDS:
episodes start from `vla eval`'s scenes (pixel-identical camera images), JointTrajectory goals
move the arm, and the franka_gripper Grasp action closes the fingers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.ros]
ARM = [f"fr3_joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def sim_node(tmp_path_factory):
    domain = 150 + os.getpid() % 50
    log = tmp_path_factory.mktemp("sim") / "sim_franka.log"
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vla_ros.sim_franka_node",
            "--ros-args",
            "-p",
            "seed:=1000",
            "-p",
            "image_size:=64",
            "-p",
            "real_time_factor:=1.0",
        ],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield domain, proc
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]


class Probe:
    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.images, self.joints, self.status = [], [], {}
        self.node.create_subscription(Image, "/camera/camera/color/image_raw", self.images.append, 10)
        self.node.create_subscription(JointState, "/joint_states", self.joints.append, 10)
        self.node.create_subscription(String, "/sim/status", lambda m: self.status.update(json.loads(m.data)), 10)
        self.trajectory_pub = self.node.create_publisher(JointTrajectory, "/fr3_arm_controller/joint_trajectory", 10)
        self.reset_client = self.node.create_client(Trigger, "/sim/reset")
        self.Trigger = Trigger

    def spin(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.executor.spin_once(timeout_sec=0.02)

    def wait(self, future, timeout: float = 30.0):
        self.spin(timeout, until=future.done)
        assert future.done(), "no answer"
        return future.result()

    def close(self):
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def test_sim_franka_over_dds(sim_node):
    from control_msgs.action import FollowJointTrajectory  # noqa: F401 - the interface packages are built
    from franka_msgs.action import Grasp
    from rclpy.action import ActionClient
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from sim.franka_mujoco import SimFrankaConfig, SimulatedFranka
    from vla_ros.ros_util import msg_to_image, s_to_duration

    domain, proc = sim_node
    probe = Probe(domain)
    try:
        assert probe.reset_client.wait_for_service(timeout_sec=90), "no /sim/reset"
        reply = json.loads(probe.wait(probe.reset_client.call_async(probe.Trigger.Request())).message)
        assert reply["episode"] == 0
        probe.images.clear()
        probe.spin(20, until=lambda: probe.status.get("episode") == 0 and len(probe.images) >= 1)
        published = msg_to_image(probe.images[0])

        reference = SimulatedFranka(SimFrankaConfig(seed=1000, image_size=64))
        assert reference.reset(0) == reply["seed"]  # the scene `vla eval --seed 1000` starts episode 0 from
        expected = reference.render("scene")
        reference.close()
        assert published.shape == expected.shape == (64, 64, 3)
        assert np.abs(published.astype(int) - expected.astype(int)).mean() < 2.0, "camera images are not the scene"
        assert published.std() > 10, "a blank or garbage image"

        probe.spin(2, until=lambda: probe.joints)
        q0 = np.array(probe.joints[-1].position[:7])
        target = q0 + np.array([0.15, -0.1, 0.0, 0.1, 0.0, 0.1, 0.2])
        msg = JointTrajectory(
            joint_names=ARM,
            points=[JointTrajectoryPoint(positions=target.tolist(), time_from_start=s_to_duration(1.0))],
        )
        probe.trajectory_pub.publish(msg)
        probe.spin(6, until=lambda: np.abs(np.array(probe.joints[-1].position[:7]) - target).max() < 0.01)
        assert np.abs(np.array(probe.joints[-1].position[:7]) - target).max() < 0.01, "the arm did not follow"

        grasp = ActionClient(probe.node, Grasp, "/franka_gripper/grasp")
        assert grasp.wait_for_server(timeout_sec=10)
        goal = Grasp.Goal(width=0.0, speed=0.1, force=20.0)
        goal.epsilon.inner, goal.epsilon.outer = 0.005, 0.08
        handle = probe.wait(grasp.send_goal_async(goal))
        result = probe.wait(handle.get_result_async()).result
        assert result.success, result.error
        probe.spin(0.3)
        assert probe.joints[-1].position[7] + probe.joints[-1].position[8] < 0.01  # fingers closed on nothing
        assert proc.poll() is None
    finally:
        probe.close()
