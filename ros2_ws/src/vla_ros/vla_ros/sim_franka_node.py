"""A simulated Franka with franka_ros2's interfaces, so the whole graph runs without hardware.

Offers what the policy node talks to on a real robot PC:
  /joint_states                                   sensor_msgs/JointState (arm + finger joints)
  /<controller>/joint_trajectory                  trajectory_msgs/JointTrajectory (JTC topic)
  /<controller>/follow_joint_trajectory           control_msgs/FollowJointTrajectory (JTC action)
  /franka_gripper/{move,grasp,homing}             franka_msgs actions
  /<camera>/<camera>/color/image_raw              sensor_msgs/Image (RealSense topic names)
and, for evaluation, /clock (sim time), /sim/status (JSON) and /sim/reset (std_srvs/Trigger:
starts the next episode from the same seed `vla eval` would use).

The physics runs in its own thread at ``control_hz`` of simulated time, paced to
``real_time_factor`` of the wall clock; rendering is the slow part on a CPU, so graphs here
run with use_sim_time and a factor below 1, and every node sees consistent time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from vla_ros.ros_util import image_to_msg, run_node, s_to_stamp, stamp_to_s

CAMERA_TOPICS = {"scene": "camera", "wrist": "wrist_camera"}  # camera -> RealSense camera_name


@dataclass
class SimFrankaNodeConfig:
    task: str = "robomimic/Lift"
    arm_id: str = "fr3"  # joint names <arm_id>_joint1..7, as franka_ros2 names them
    controller: str = "fr3_arm_controller"
    control_hz: float = 100.0
    camera_hz: float = 20.0
    joint_state_hz: float = 100.0
    image_size: int = 84
    render_quality: str = "fast"  # the camera look (sim/rendering.py): fast, or default (MuJoCo's own)
    cameras: tuple[str, ...] = ("scene", "wrist")
    seed: int = 0
    real_time_factor: float = 1.0
    joint_kp: float = 1000.0  # sim/robomimic.py JOINT_TARGET_KP, as `vla eval --env-options controller=JOINT_TARGET`
    start_time_s: float = 1.0  # sim time starts here: a zero stamp means "now" to a JTC

    def __post_init__(self):
        if self.arm_id not in ("fr3", "fer"):
            raise ValueError(f"arm_id must be 'fr3' or 'fer', got {self.arm_id!r}")
        for name in ("control_hz", "camera_hz", "joint_state_hz", "real_time_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        unknown = [c for c in self.cameras if c not in CAMERA_TOPICS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; available: {', '.join(CAMERA_TOPICS)}")


def camera_topic(camera: str) -> str:
    name = CAMERA_TOPICS[camera]
    return f"/{name}/{name}/color/image_raw"


class SimFrankaNode:
    def __init__(self, node, config: SimFrankaNodeConfig):
        from rclpy.action import ActionServer, CancelResponse, GoalResponse
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from sim.franka_mujoco import SimFrankaConfig, SimulatedFranka, TrajectoryFollower

        self.node, self.config = node, config
        self.log = node.get_logger()
        # The physics thread builds the simulator: MuJoCo's offscreen (EGL) context belongs to the
        # thread that creates it, and rendering from any other thread returns garbage images.
        self._sim_config = SimFrankaConfig(
            task=config.task,
            control_hz=config.control_hz,
            image_size=config.image_size,
            render_quality=config.render_quality,
            cameras=tuple(config.cameras),
            seed=config.seed,
            joint_kp=config.joint_kp,
        )
        self._built, self._go, self._build_error = threading.Event(), threading.Event(), None
        self._reset_requested, self._reset_done, self._reset_seed = threading.Event(), threading.Event(), None
        self.running = True
        self.thread = threading.Thread(target=self._physics_main, args=(SimulatedFranka,), name="physics", daemon=True)
        self.thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        self.joint_names = [f"{config.arm_id}_joint{i}" for i in range(1, 8)]
        self.finger_names = [f"{config.arm_id}_finger_joint1", f"{config.arm_id}_finger_joint2"]
        self.lock = threading.Lock()  # the physics thread vs. service/action callbacks
        self.sim_time = config.start_time_s
        self.follower = TrajectoryFollower(self.robot.joint_positions())
        self.trajectory_generation = 0
        self.counters = {"trajectories": 0, "points_skipped_past": 0, "trajectories_refused": 0}

        group = ReentrantCallbackGroup()
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.joint_pub = node.create_publisher(JointState, "/joint_states", 10)
        self.image_pubs = {c: node.create_publisher(Image, camera_topic(c), reliable) for c in config.cameras}
        self.status_pub = node.create_publisher(String, "/sim/status", 10)
        self.JointState, self.Clock, self.String = JointState, Clock, String
        node.create_subscription(
            JointTrajectory, f"/{config.controller}/joint_trajectory", self._on_trajectory, 10, callback_group=group
        )
        node.create_service(Trigger, "/sim/reset", self._on_reset, callback_group=group)

        from control_msgs.action import FollowJointTrajectory
        from franka_msgs.action import Grasp, Homing, Move

        accept = lambda _goal: GoalResponse.ACCEPT  # noqa: E731
        cancel = lambda _goal: CancelResponse.ACCEPT  # noqa: E731
        self.action_servers = [
            ActionServer(
                node,
                FollowJointTrajectory,
                f"/{config.controller}/follow_joint_trajectory",
                self._execute_follow,
                goal_callback=accept,
                cancel_callback=cancel,
                callback_group=group,
            ),
            ActionServer(node, Move, "/franka_gripper/move", self._execute_move, callback_group=group),
            ActionServer(node, Grasp, "/franka_gripper/grasp", self._execute_grasp, callback_group=group),
            ActionServer(node, Homing, "/franka_gripper/homing", self._execute_homing, callback_group=group),
        ]
        self.FollowJointTrajectory, self.Grasp, self.Homing, self.Move = FollowJointTrajectory, Grasp, Homing, Move
        self.log.info(
            f"simulated {config.arm_id} on {config.task} ({self.robot.instruction!r}): control {config.control_hz} Hz, "
            f"cameras {list(config.cameras)} at {config.camera_hz} Hz, real-time factor {config.real_time_factor}"
        )

    # ------------------------------------------------------------------ physics thread
    def start(self) -> None:
        self._go.set()

    def _physics_main(self, simulator_class) -> None:
        try:
            self.robot = simulator_class(self._sim_config)
            self.robot.reset(0)
            self.robot.episode = -1  # the first /sim/reset starts episode 0
        except Exception as err:  # noqa: BLE001 - reported by __init__ in the node's thread
            self._build_error = err
            self._built.set()
            return
        self._built.set()
        self._go.wait()
        if self.running:
            self._physics_loop()
        # No explicit close: tearing the EGL context down here can block the process's exit;
        # the operating system frees it with the process.

    def _physics_loop(self) -> None:
        cfg = self.config
        dt = 1.0 / cfg.control_hz
        next_camera = next_joint = next_status = self.sim_time
        wall0, sim0 = time.monotonic(), self.sim_time
        while self.running:
            with self.lock:
                if self._reset_requested.is_set():  # resets run here: the simulator lives in this thread
                    self._reset_seed = self.robot.reset()
                    self.follower.hold(self.robot.joint_positions())
                    self._publish_joint_state(self.sim_time)
                    self._reset_requested.clear()
                    self._reset_done.set()
                self.sim_time += dt
                q_desired = self.follower.sample(self.sim_time)
                self.robot.step(q_desired)
                now = self.sim_time
                self.clock_pub.publish(self.Clock(clock=s_to_stamp(now)))
                if now + 1e-9 >= next_joint:
                    self._publish_joint_state(now)
                    next_joint += 1.0 / cfg.joint_state_hz
                if now + 1e-9 >= next_camera:
                    stamp = s_to_stamp(now)
                    for camera, pub in self.image_pubs.items():
                        pub.publish(
                            image_to_msg(self.robot.render(camera), stamp, frame_id=f"{camera}_color_optical_frame")
                        )
                    next_camera += 1.0 / cfg.camera_hz
                if now + 1e-9 >= next_status:
                    self._publish_status(now)
                    next_status += 0.1
            lag = wall0 + (now - sim0) / cfg.real_time_factor - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            elif lag < -0.5:  # cannot keep the factor: re-anchor instead of racing to catch up
                wall0, sim0 = time.monotonic(), now

    def _publish_joint_state(self, now: float) -> None:
        msg = self.JointState()
        msg.header.stamp = s_to_stamp(now)
        msg.name = self.joint_names + self.finger_names
        msg.position = np.concatenate([self.robot.joint_positions(), self.robot.finger_positions()]).tolist()
        msg.velocity = np.concatenate([self.robot.joint_velocities(), np.zeros(2)]).tolist()
        msg.effort = [0.0] * 9
        self.joint_pub.publish(msg)

    def _status(self) -> dict:
        return {
            "episode": self.robot.episode,
            "seed": self.robot.config.seed,
            "sim_time": round(self.sim_time, 4),
            "steps": self.robot.steps,
            "success": bool(self.robot.success),
            "gripper_width": round(self.robot.gripper_width(), 5),
            "instruction": self.robot.instruction,
            **self.counters,
        }

    def _publish_status(self, now: float) -> None:
        self.status_pub.publish(self.String(data=json.dumps(self._status())))

    # ------------------------------------------------------------------ arm commands
    def _install(self, msg) -> str | None:
        """Install a JointTrajectory; returns an error string (and installs nothing) if it is invalid."""
        if list(msg.joint_names) != self.joint_names:
            if sorted(msg.joint_names) != sorted(self.joint_names):
                return f"joint names {list(msg.joint_names)} do not match {self.joint_names}"
        order = [list(msg.joint_names).index(n) for n in self.joint_names]
        if not msg.points:
            return "empty trajectory"
        try:
            points = np.array([[p.positions[i] for i in order] for p in msg.points], dtype=np.float64)
        except IndexError:
            return "a trajectory point has fewer positions than joint names"
        offsets = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
        if np.any(np.diff(offsets) <= 0):
            return "time_from_start must increase strictly"
        with self.lock:
            start = stamp_to_s(msg.header.stamp) or self.sim_time
            try:
                skipped = self.follower.set_trajectory(points, start + offsets, self.sim_time)
            except ValueError as err:
                return str(err)
            self.trajectory_generation += 1
            self.counters["trajectories"] += 1
            self.counters["points_skipped_past"] += skipped
            return None

    def _on_trajectory(self, msg) -> None:
        error = self._install(msg)
        if error:
            self.counters["trajectories_refused"] += 1
            self.log.error(f"refused trajectory: {error}")

    def _execute_follow(self, goal_handle):
        result = self.FollowJointTrajectory.Result()
        error = self._install(goal_handle.request.trajectory)
        if error:
            result.error_code, result.error_string = self.FollowJointTrajectory.Result.INVALID_GOAL, error
            goal_handle.abort()
            return result
        generation = self.trajectory_generation
        end = stamp_to_s(goal_handle.request.trajectory.header.stamp) or self.sim_time
        last = goal_handle.request.trajectory.points[-1].time_from_start
        end = max(end, self.sim_time) + last.sec + last.nanosec * 1e-9
        while self.running and self.sim_time < end:
            if goal_handle.is_cancel_requested:
                with self.lock:
                    self.follower.hold(self.robot.joint_positions())
                goal_handle.canceled()
                return result
            if self.trajectory_generation != generation:  # preempted by a newer goal, as a JTC does
                goal_handle.abort()
                result.error_string = "preempted by a newer trajectory"
                return result
            time.sleep(0.002)
        result.error_code = self.FollowJointTrajectory.Result.SUCCESSFUL
        goal_handle.succeed()
        return result

    # ------------------------------------------------------------------ gripper
    def _move_fingers(self, close: bool, timeout_s: float = 2.0) -> float:
        """Command the fingers and wait (sim time) until they stop; returns the final width."""
        with self.lock:
            self.robot.gripper_closed = close
        start, last, still = self.sim_time, self.robot.gripper_width(), 0
        checked = start
        while self.running and self.sim_time - start < timeout_s and still < 5:  # sim time stops at shutdown
            time.sleep(0.005)
            if self.sim_time - checked < 0.02:  # compare 20 ms of sim time apart, however slow the sim runs
                continue
            checked = self.sim_time
            width = self.robot.gripper_width()
            # the fingers take a moment to start: "stopped" only counts after 0.2 s of sim time
            still = still + 1 if abs(width - last) < 2e-4 and self.sim_time - start > 0.2 else 0
            last = width
        return last

    def _execute_move(self, goal_handle):
        width = goal_handle.request.width
        final = self._move_fingers(close=width < 0.5 * 0.08)
        result = self.Move.Result()
        result.success = abs(final - width) < 0.01 or (width >= 0.04 and final > 0.035)
        if not result.success:
            result.error = f"reached {final:.4f} m instead of {width:.4f} m"
        goal_handle.succeed()
        return result

    def _execute_grasp(self, goal_handle):
        request = goal_handle.request
        final = self._move_fingers(close=True)
        result = self.Grasp.Result()
        result.success = request.width - request.epsilon.inner <= final <= request.width + request.epsilon.outer
        if not result.success:
            result.error = (
                f"grasped width {final:.4f} m outside [{request.width - request.epsilon.inner:.4f}, "
                f"{request.width + request.epsilon.outer:.4f}]"
            )
        goal_handle.succeed()
        return result

    def _execute_homing(self, goal_handle):
        self._move_fingers(close=False)
        result = self.Homing.Result()
        result.success = True
        goal_handle.succeed()
        return result

    # ------------------------------------------------------------------ episodes
    def _on_reset(self, _request, response):
        self._reset_done.clear()
        self._reset_requested.set()
        if not self._reset_done.wait(timeout=60.0):
            response.success, response.message = False, "the physics thread did not reset within 60 s"
            return response
        seed = self._reset_seed
        response.success = True
        response.message = json.dumps(
            {"episode": self.robot.episode, "seed": seed, "instruction": self.robot.instruction}
        )
        self.log.info(f"episode {self.robot.episode} (seed {seed})")
        return response

    def shutdown(self) -> None:
        self.running = False
        self._go.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)


def main(args: list[str] | None = None) -> int:
    # The simulator keeps the Python executor: its physics thread does the timed work, and on the
    # EventsExecutor it once outlived SIGINT + SIGTERM (8 s) at shutdown in CI; not yet understood.
    return run_node("sim_franka", SimFrankaNodeConfig, SimFrankaNode, args=args, default_executor="multi_threaded")


if __name__ == "__main__":
    sys.exit(main())
