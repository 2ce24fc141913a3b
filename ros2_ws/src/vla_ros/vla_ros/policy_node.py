"""The policy node: cameras + joint states + an instruction in, JointTrajectory goals out.

    camera images ─┐                        ┌─> /<controller>/joint_trajectory (or the
    /joint_states ─┼─> observation ─> policy ┤      FollowJointTrajectory action)
    instruction  ──┘    (inference thread)  └─> /franka_gripper/{grasp,move}

Inference runs in its own thread, started by the first camera frame after a new chunk is
wanted (so the observation is the freshest there is); the chunk goes to a ChunkScheduler
(timestamped actions, late ones dropped, optional temporal ensembling) and is published at
once; a control timer re-publishes from the scheduler at ``control_hz`` and never waits on the
model. Every trajectory passes the SafetyLayer (limits, step clamp, workspace, watchdog,
e-stop latch); anything refused makes the arm hold. Services ~/enable, ~/estop, ~/reset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import traceback
import typing
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hardware.safety import SafetyConfig
from vla_ros.ros_util import msg_to_image, run_node, s_to_duration, s_to_stamp, stamp_to_s

DEFAULT_CAMERAS = ("scene=/camera/camera/color/image_raw", "wrist=/wrist_camera/wrist_camera/color/image_raw")
# Fields of the nested SafetyConfig that the node sets itself, so they are not ROS parameters:
# the robot from ``robot``, the control period from ``control_hz``, the watched cameras from the policy's.
NODE_SET_PARAMETERS = ("safety.robot", "safety.control_dt", "safety.cameras")


@dataclass
class PolicyNodeConfig:
    """The policy node's ROS parameters. Nested dataclasses are dotted parameters
    (``safety.max_step_rad``; in a YAML file, ``safety: {max_step_rad: 0.03}`` under ``ros__parameters``)."""

    checkpoint: str = field(
        default="", metadata={"help": "a `vla train` checkpoint directory (in-process inference), or set server_host"}
    )
    server_host: str = field(default="", metadata={"help": "host of a `vla serve` policy server, or set checkpoint"})
    server_port: int = field(default=8000, metadata={"help": "port of the policy server"})
    api_key: str = field(
        default="",
        metadata={
            "help": "the policy server's API key, if it wants one; empty: the environment variable VLA_SERVE_API_KEY "
            "(preferred: a parameter is readable by anyone on the ROS domain)"
        },
    )
    device: str = field(
        default="cpu",
        metadata={
            "help": "torch device for in-process inference; used as given: a missing GPU is an error, never a silent "
            "CPU fallback"
        },
    )
    torch_threads: int = field(default=1, metadata={"help": "intra-op threads for in-process CPU inference"})
    seed: int = field(default=0, metadata={"help": "seed of the in-process policy's sampling noise"})
    verifier: str = field(
        default="",
        metadata={
            "help": "in-process test-time verifier: taco picks each chunk among num_samples candidates (fit it with "
            "`vla verifier fit`; a server's own --verifier is reported the same way)"
        },
    )
    num_samples: int = field(default=16, metadata={"help": "candidate chunks per inference with a verifier"})
    on_out_of_distribution: Literal["report", "hold"] = field(
        default="report",
        metadata={
            "help": "when the verifier counts the best candidate below its calibrated threshold: report (diagnostics "
            "count and event, the chunk runs) or hold (the chunk is refused and the arm holds)"
        },
    )
    arm_id: str = field(default="fr3", metadata={"help": "joint names <arm_id>_joint1..7 (fr3, fer, ...)"})
    robot: str = field(
        default="fr3",
        metadata={
            "help": "joint-limit table, a name in the registry hardware.franka.limits.ROBOTS (fr3, panda); also the "
            "safety layer's robot"
        },
    )
    controller: str = field(
        default="fr3_arm_controller",
        metadata={
            "help": "JointTrajectoryController name: /<controller>/joint_trajectory or /<controller>/follow_joint_trajectory"
        },
    )
    command_interface: Literal["topic", "action"] = field(
        default="topic", metadata={"help": "topic (JointTrajectory messages) or action (FollowJointTrajectory goals)"}
    )
    gripper: Literal["franka", "none"] = field(
        default="franka", metadata={"help": "franka (franka_gripper grasp/move actions) or none"}
    )
    joint_states_topic: str = field(default="/joint_states", metadata={"help": "sensor_msgs/JointState topic"})
    cameras: tuple[str, ...] = field(
        default=DEFAULT_CAMERAS, metadata={"help": "<policy camera>=<image topic> entries"}
    )
    compressed_images: bool = field(
        default=False, metadata={"help": "subscribe to <topic>/compressed (sensor_msgs/CompressedImage)"}
    )
    resize_images: bool = field(
        default=False, metadata={"help": "resize camera frames to the policy's size (else a size mismatch is refused)"}
    )
    max_image_pixels: int = field(
        default=1920 * 1080,
        metadata={
            "help": "with resize_images, larger frames are refused before they are converted (without it, any size "
            "but the policy's is refused)"
        },
    )
    instruction: str = field(default="", metadata={"help": "default task instruction; instruction_topic overrides it"})
    instruction_topic: str = field(default="/task_instruction", metadata={"help": "std_msgs/String instruction topic"})
    state_layout: str = field(
        default="robomimic_panda",
        metadata={
            "help": "how observation.state is built from joint measurements, a name in the registry "
            "hardware.deployment.STATE_LAYOUTS"
        },
    )
    action_space: str = field(
        default="ee_delta",
        metadata={"help": "what the policy's actions mean, a name in the registry hardware.deployment.ACTION_SPACES"},
    )
    ee_delta_gain: float = field(
        default=0.25,
        metadata={
            "help": "scales end-effector deltas (action_space ee_delta; other action spaces ignore it), in (0, 1]. "
            "0.25 for policies trained in robosuite: its compliant OSC covers only about a quarter of each "
            "commanded delta per step, while a tracking arm covers all of it, so 1.0 overshoots every goal"
        },
    )
    base_pos: tuple[float, ...] = field(
        default=(0.0, 0.0, 0.0), metadata={"help": "robot base position in the frame the policy was trained in (m)"}
    )
    base_quat: tuple[float, ...] = field(
        default=(1.0, 0.0, 0.0, 0.0), metadata={"help": "robot base orientation in that frame (wxyz)"}
    )
    control_hz: float = field(default=20.0, metadata={"help": "the policy's control rate (one action per tick)"})
    n_action_steps: int = field(default=0, metadata={"help": "actions executed per chunk; 0: the checkpoint's"})
    temporal_ensemble: float = field(default=-1.0, metadata={"help": "ACT weights exp(-m*i); negative: off"})
    max_latency_s: float = field(
        default=0.5, metadata={"help": "a chunk arriving later than this after its observation is refused (s)"}
    )
    gripper_hysteresis: float = field(
        default=0.5, metadata={"help": "a gripper command only when the action crosses +-this (no chatter)"}
    )
    gripper_open_width: float = field(default=0.08, metadata={"help": "gripper width to open to (m)"})
    gripper_speed: float = field(default=0.1, metadata={"help": "gripper speed (m/s)"})
    grasp_force: float = field(default=20.0, metadata={"help": "grasp force (N)"})
    grasp_epsilon_outer: float = field(
        default=0.08, metadata={"help": "a grasp (target width 0) succeeds at any width up to this (m)"}
    )
    safety: SafetyConfig = field(
        default_factory=SafetyConfig,
        metadata={
            "help": "the safety layer's limits, parameters safety.<field>; its robot, control_dt and cameras are set "
            "by the node (from robot, control_hz and the policy's cameras)"
        },
    )

    def __post_init__(self):
        from hardware.deployment import ACTION_SPACES, STATE_LAYOUTS

        if bool(self.checkpoint) == bool(self.server_host):
            raise ValueError("set exactly one of checkpoint (in-process policy) or server_host (policy server)")
        hints = typing.get_type_hints(type(self))
        for name in ("command_interface", "gripper"):
            allowed = typing.get_args(hints[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; available: {', '.join(allowed)}")
        STATE_LAYOUTS.get(self.state_layout)
        ACTION_SPACES.get(self.action_space)
        if self.control_hz <= 0:
            raise ValueError(f"control_hz must be positive, got {self.control_hz}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if len(self.base_pos) != 3 or len(self.base_quat) != 4:
            raise ValueError("base_pos needs 3 values and base_quat (wxyz) 4")
        self.cameras = tuple(self.cameras)
        for entry in self.cameras:
            if "=" not in entry:
                raise ValueError(f"cameras entries are '<policy camera>=<topic>', got {entry!r}")
        # the node's robot and control rate are the safety layer's (validated by SafetyConfig)
        self.safety = dataclasses.replace(self.safety, robot=self.robot, control_dt=1.0 / self.control_hz)

    def camera_topics(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.cameras)


class PolicyNode:
    def __init__(self, node, config: PolicyNodeConfig):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from hardware.action_chunks import ChunkScheduler, ChunkSchedulerConfig
        from hardware.deployment import (
            ACTION_SPACES,
            STATE_LAYOUTS,
            GripperSwitch,
            LatencyLog,
            LocalPolicy,
            Measurement,
            RemotePolicy,
            feature_shapes,
        )
        from hardware.franka.kinematics import PandaKinematics
        from hardware.franka.limits import ROBOTS
        from hardware.safety import SafetyLayer, SafetyState
        from vla import keys

        self.node, self.config, self.log = node, config, node.get_logger()
        self.keys, self.Measurement, self.SafetyState = keys, Measurement, SafetyState
        self.JointTrajectory, self.JointTrajectoryPoint = JointTrajectory, JointTrajectoryPoint
        self.String, self.DiagnosticArray = String, DiagnosticArray

        # ---- the policy (fails loudly: no checkpoint or no server means no node)
        if config.checkpoint:
            self.policy = LocalPolicy(
                config.checkpoint,
                device=config.device,
                seed=config.seed,
                threads=config.torch_threads,
                verifier=config.verifier,
                num_samples=config.num_samples,
            )
            source = f"checkpoint {config.checkpoint} on {config.device}"
        else:
            from vla.serving.auth import API_KEY_ENV

            api_key = config.api_key or os.environ.get(API_KEY_ENV, "").strip() or None
            self.policy = RemotePolicy(config.server_host, config.server_port, api_key=api_key)
            source = f"policy server {config.server_host}:{config.server_port}"
        meta = self.policy.metadata
        self.features = feature_shapes(meta)
        self.cameras = config.camera_topics()
        image_features = [f for f in self.features if f.startswith(keys.OBS_IMAGE_PREFIX)]
        wanted = {keys.camera_of(f) for f in image_features}
        missing = sorted(wanted - set(self.cameras))
        if missing:
            raise ValueError(f"the policy needs camera(s) {missing}; configured: {sorted(self.cameras)}")
        privileged = sorted(set(self.features) - {keys.OBS_STATE} - set(image_features))
        if privileged:
            raise ValueError(
                f"the policy needs {privileged}, which a robot cannot measure; deploy a policy trained on "
                f"{keys.OBS_STATE} and camera images only"
            )
        action_cls = ACTION_SPACES.get(config.action_space)
        if meta["action_dim"] != action_cls.action_dim:
            raise ValueError(
                f"action space {config.action_space!r} has {action_cls.action_dim} dims; "
                f"the policy outputs {meta['action_dim']}"
            )

        self.kinematics = PandaKinematics(base_pos=config.base_pos, base_quat=config.base_quat)
        base_frame = PandaKinematics()  # the safety layer's workspace box is in the robot base frame
        self.state_fn = STATE_LAYOUTS.get(config.state_layout)
        # end-effector goals are clipped 1 cm inside the workspace box, so the box check after IK
        # (which refuses and holds) only fires on what clipping cannot fix
        inset = np.full(3, 0.01)
        goal_box = (np.asarray(config.safety.workspace_min) + inset, np.asarray(config.safety.workspace_max) - inset)
        gain = config.ee_delta_gain if config.action_space == "ee_delta" else 1.0  # joint targets take no gain
        self.action_space = action_cls(self.kinematics, gain=gain, goal_box=goal_box)
        self.joint_names = [f"{config.arm_id}_joint{i}" for i in range(1, 8)]
        self.finger_names = [f"{config.arm_id}_finger_joint1", f"{config.arm_id}_finger_joint2"]
        safety_names = list(ROBOTS.get(config.robot).joint_names)
        self._to_safety_names = dict(zip(self.joint_names, safety_names, strict=True))
        self.safety = SafetyLayer(
            dataclasses.replace(config.safety, cameras=tuple(sorted(wanted))), fk=lambda q: base_frame.fk(q)[0]
        )
        k = config.n_action_steps or meta["n_action_steps"]
        if not 1 <= k <= meta["chunk_size"]:
            raise ValueError(f"n_action_steps must be in [1, {meta['chunk_size']}] (the policy's chunk size), got {k}")
        self.scheduler = ChunkScheduler(
            ChunkSchedulerConfig(
                control_dt=1.0 / config.control_hz,
                n_action_steps=int(k),
                max_latency_s=config.max_latency_s,
                temporal_ensemble=config.temporal_ensemble if config.temporal_ensemble >= 0 else None,
            )
        )
        self.gripper_switch = GripperSwitch(hysteresis=config.gripper_hysteresis)
        self.latency = LatencyLog()

        # ---- latest inputs (written by callbacks, read by the inference thread)
        self.lock = threading.Lock()
        self.images: dict[str, tuple[np.ndarray, float, float]] = {}  # camera -> (rgb, stamp, receipt perf_counter)
        self.measurement = None
        self.instruction = config.instruction
        self.frame_event = threading.Event()
        self.control_lock = threading.Lock()
        self.published = 0
        self.rate_window: list[float] = []
        self.error_log_times: dict[str, float] = {}
        self.last_event_seq = 0  # events up to this sequence number are published
        self.enabled_at: float | None = None
        self.was_enabled = False
        # stall detection: the reason inference is not producing chunks, and since when
        self.stall_reason: str | None = None
        self.last_chunk_time: float | None = None
        self.stall_limit_s = config.max_latency_s + self.scheduler.config.n_action_steps / config.control_hz
        # action goals are sent from the executor's thread (rclpy's action client is not thread-safe:
        # goals sent from the inference thread lost their responses): other threads queue them and
        # hand the executor a task (create_task is thread-safe; EventsExecutor has no guard conditions)
        self.pending_goals: list[tuple[object, object, object]] = []  # (client, goal, done callback)
        self.pending_lock = threading.Lock()

        image_group = ReentrantCallbackGroup()
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        for camera, topic in self.cameras.items():
            if camera not in wanted:
                continue
            msg_type, topic = (CompressedImage, topic + "/compressed") if config.compressed_images else (Image, topic)
            node.create_subscription(
                msg_type, topic, lambda msg, c=camera: self._on_image(c, msg), reliable, callback_group=image_group
            )
        node.create_subscription(
            JointState, config.joint_states_topic, self._on_joint_state, 10, callback_group=image_group
        )
        node.create_subscription(String, config.instruction_topic, self._on_instruction, 10)
        self.trajectory_pub = node.create_publisher(JointTrajectory, f"/{config.controller}/joint_trajectory", 10)
        self.events_pub = node.create_publisher(String, "/vla/policy_events", 50)
        self.diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.trajectory_client = None
        if config.command_interface == "action":
            from control_msgs.action import FollowJointTrajectory
            from rclpy.action import ActionClient

            self.FollowJointTrajectory = FollowJointTrajectory
            self.trajectory_client = ActionClient(
                node, FollowJointTrajectory, f"/{config.controller}/follow_joint_trajectory"
            )
        self.gripper_clients = None
        if config.gripper == "franka":
            from franka_msgs.action import Grasp, Move
            from rclpy.action import ActionClient

            self.Grasp, self.Move = Grasp, Move
            self.gripper_clients = {
                "grasp": ActionClient(node, Grasp, "/franka_gripper/grasp"),
                "move": ActionClient(node, Move, "/franka_gripper/move"),
            }
        services = MutuallyExclusiveCallbackGroup()
        node.create_service(Trigger, "~/enable", self._on_enable, callback_group=services)
        node.create_service(Trigger, "~/estop", self._on_estop, callback_group=services)
        node.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)
        node.create_timer(
            1.0 / config.control_hz, self._on_control_timer, callback_group=MutuallyExclusiveCallbackGroup()
        )
        node.create_timer(1.0, self._publish_diagnostics)
        self.running = True
        self.inference_thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self.inference_thread.start()
        self.log.info(
            f"policy from {source}: {meta['head']} head, {meta['inference_steps']} NFE, chunk "
            f"{meta['chunk_size']} x {meta['action_dim']}, executing {k} per chunk at {config.control_hz} Hz; "
            f"cameras {self.cameras}; action space {config.action_space}; robot {config.robot}. "
            f"State: DISABLED (call ~/enable)"
        )

    # ------------------------------------------------------------------ helpers
    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _throttled_error(self, key: str, message: str, period_s: float = 1.0) -> None:
        t = time.monotonic()
        if t - self.error_log_times.get(key, -1e9) >= period_s:
            self.error_log_times[key] = t
            self.log.error(message)

    # ------------------------------------------------------------------ inputs
    def _oversized(self, camera: str, msg) -> str | None:
        """Why a frame is refused before conversion (decoding a 4000x4000 frame costs ~270 MB)."""
        if hasattr(msg, "format"):  # compressed: the byte count bounds the work until decoding
            limit = 3 * self.config.max_image_pixels
            return f"{len(msg.data)} compressed bytes > {limit}" if len(msg.data) > limit else None
        h, w = int(msg.height), int(msg.width)
        shape = self.features.get(self.keys.image_key(camera))
        if not self.config.resize_images and shape is not None and (h, w) != tuple(shape[:2]):
            return f"{w}x{h} frame, the policy was trained on {shape[1]}x{shape[0]}; set resize_images:=true to resize"
        if h * w > self.config.max_image_pixels:
            return f"{w}x{h} frame > max_image_pixels {self.config.max_image_pixels}"
        return None

    def _on_image(self, camera: str, msg) -> None:
        received = time.perf_counter()
        now = self.now()
        problem = self._oversized(camera, msg)
        if problem is None:
            try:
                image = msg_to_image(msg)
            except ValueError as err:
                problem = str(err)
        if problem is not None:
            self.safety.counters["malformed_image"] = self.safety.counters.get("malformed_image", 0) + 1
            self._note_stall(now, f"{camera} image refused: {problem}")
            self._throttled_error(f"image-{camera}", f"dropped a {camera} image: {problem}")
            return
        stamp = stamp_to_s(msg.header.stamp)
        if stamp == 0.0:  # an unstamped frame's age is unknown: it never counts as fresh
            self._note_stall(now, f"{camera} image unstamped (header.stamp 0)")
            return
        self.latency.add("image_age_ms", (now - stamp) * 1e3)
        if not self.safety.observe_image(camera, stamp, now):
            return  # refused (clock skew, counted and reported by the safety layer) or not newer
        with self.lock:
            self.images[camera] = (image, min(stamp, now), received)
        self.frame_event.set()

    def _on_joint_state(self, msg) -> None:
        """Hand the whole message to the safety layer: it refuses duplicated, missing, non-finite,
        out-of-limit and future-stamped arm joints; the fingers are checked here."""
        now = self.now()
        names = list(msg.name)
        try:
            positions = np.asarray(msg.position, dtype=np.float64)
        except (TypeError, ValueError):
            positions = np.full(len(msg.position), np.nan)
        stamp = stamp_to_s(msg.header.stamp)
        problem = None
        if len(positions) != len(names):
            problem = f"joint state with {len(names)} names but {len(positions)} positions"
        elif len(set(names)) != len(names):
            problem = f"joint state names repeated: {sorted({n for n in names if names.count(n) > 1})}"
        elif stamp == 0.0:
            problem = "joint state unstamped (header.stamp 0): its age cannot be known"
        else:
            index = {n: i for i, n in enumerate(names)}
            fingers = np.array([positions[index[n]] if n in index else 0.0 for n in self.finger_names])
            if not np.all(np.isfinite(fingers)):
                problem = f"non-finite finger positions {fingers.tolist()}"
        if problem is not None:
            self.safety.refuse(now, "bad_joint_state", problem, throttle_key=problem[:40])
            self._note_stall(now, problem)
            return
        self.latency.add("joint_state_age_ms", (now - stamp) * 1e3)
        safety_names = [self._to_safety_names.get(n, n) for n in names]
        if self.safety.observe_joint_state(safety_names, positions, stamp, now):
            q = self.safety.measured_pose
            measured_stamp = self.safety.measured_stamp
            assert q is not None and measured_stamp is not None
            with self.lock:
                self.measurement = self.Measurement(q=q, fingers=fingers, stamp=measured_stamp)

    def _on_instruction(self, msg) -> None:
        with self.lock:
            self.instruction = msg.data
        self.log.info(f"instruction: {msg.data!r}")

    # ------------------------------------------------------------------ inference thread
    def _snapshot(self) -> tuple[dict, float, float]:
        """The observation dict from the newest inputs, its stamp, and the newest frame's receipt time."""
        from vla import keys

        with self.lock:
            images, measurement, instruction = dict(self.images), self.measurement, self.instruction
        if measurement is None:
            raise ValueError("no joint state yet")
        obs = {}
        for feature, shape in self.features.items():
            if feature == keys.OBS_STATE:
                obs[feature] = self.state_fn(self.kinematics, measurement)
            elif feature.startswith(keys.OBS_IMAGE_PREFIX):
                camera = keys.camera_of(feature)
                if camera not in images:
                    raise ValueError(f"no {camera} image yet")
                image = images[camera][0]
                if image.shape != shape:
                    if not self.config.resize_images:
                        raise ValueError(
                            f"{camera} image is {image.shape}, the policy was trained on {shape}; "
                            "set resize_images:=true to resize"
                        )
                    image = _resize(image, shape)
                obs[feature] = image
        if self.policy.metadata.get("use_language"):
            if not instruction.strip():
                raise ValueError(
                    f"the policy is conditioned on language but there is no instruction: set the "
                    f"instruction parameter or publish one on {self.config.instruction_topic}"
                )
            obs[keys.TASK] = instruction
        newest = max(images.values(), key=lambda item: item[2]) if images else None
        return obs, measurement.stamp, newest[2] if newest else time.perf_counter()

    def _inference_loop(self) -> None:
        """Never dies: an unexpected error latches the arm (estop) and the loop goes on, so
        diagnostics and ~/reset keep their meaning."""
        while self.running:
            try:
                self._inference_step()
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one failure
                if not (self.running and self.node.context.ok()):
                    return  # shutting down: rclpy's context is already gone
                self.scheduler.cancel_request()
                reason = f"inference thread error {type(err).__name__}: {err}"
                self.safety.estop(reason[:500], now=self.now())
                self.log.error(f"{reason}; arm holds (latched; ~/reset to clear)\n{traceback.format_exc()}")
                time.sleep(0.1)

    def _inference_step(self) -> None:
        from hardware.deployment import check_observation

        if not (self.safety.state is self.SafetyState.ENABLED and self.scheduler.needs_inference(self.now())):
            time.sleep(0.002)
            return
        self.frame_event.clear()
        if not self.frame_event.wait(timeout=0.2):  # take the observation right after a fresh frame
            self._note_stall(self.now(), "no fresh camera frame")
            return
        self.scheduler.mark_requested()
        t0 = time.perf_counter()
        try:
            obs, obs_stamp, frame_received = self._snapshot()
            check_observation(self.policy.metadata, obs)
        except ValueError as err:
            self.scheduler.cancel_request()
            self._note_stall(self.now(), f"no inference: {err}")
            self._throttled_error("observation", f"no inference: {err}")
            return
        t1 = time.perf_counter()
        try:
            chunk = self.policy.infer(obs)
        except Exception as err:  # a dead server or a failing model: hold and latch, loudly
            self.scheduler.cancel_request()
            self.safety.estop(f"policy inference failed: {err}"[:500], now=self.now())
            self.log.error(f"policy inference failed, arm holds (latched; ~/reset to clear): {err}")
            return
        t2 = time.perf_counter()
        if not np.all(np.isfinite(chunk)) or chunk.ndim != 2 or chunk.shape[1] != self.action_space.action_dim:
            self.scheduler.cancel_request()
            kind = "refused_nonfinite" if not np.all(np.isfinite(chunk)) else "refused_shape"
            self.safety.refuse(
                self.now(),
                kind,
                f"policy chunk of shape {chunk.shape} refused "
                f"({'NaN/inf' if kind == 'refused_nonfinite' else 'wrong shape'}); the arm holds",
            )
            return
        now = self.now()
        verdict = getattr(self.policy, "last_verdict", None)
        if verdict is not None and verdict.get("out_of_distribution"):
            count = self.safety.counters.get("out_of_distribution", 0) + 1
            self.safety.counters["out_of_distribution"] = count
            detail = f"the verifier counts this state out of distribution (pseudo-count {verdict['pseudo_count']:.3g})"
            if self.config.on_out_of_distribution == "hold":
                self.scheduler.cancel_request()
                self.safety.refuse(now, "refused_out_of_distribution", f"{detail}; the arm holds", "ood")
                return
            self._throttled_error("out_of_distribution", f"{detail}; running it (on_out_of_distribution=report)")
        try:
            accepted = self.scheduler.add_chunk(chunk, min(obs_stamp, now), now)
        except ValueError as err:  # e.g. a chunk shorter than n_action_steps: refuse, hold, say why
            self.scheduler.cancel_request()
            self.safety.refuse(now, "refused_chunk", f"policy chunk refused: {err}")
            return
        if not accepted:
            self._note_stall(now, "chunks arrive too late (max_latency_s)")
            return
        self.last_chunk_time, self.stall_reason = now, None
        published = self._control_step(source="chunk")
        t3 = time.perf_counter()
        self.latency.add("inference_ms", (t2 - t1) * 1e3)
        self.latency.add("observation_ms", (t1 - t0) * 1e3)
        if published:
            self.latency.add("chunk_to_trajectory_ms", (t3 - t2) * 1e3)
            self.latency.add("frame_to_trajectory_excl_inference_ms", (t3 - frame_received - (t2 - t1)) * 1e3)

    def _note_stall(self, now: float, reason: str) -> None:
        """Remember why no chunk is coming (diagnostics say it at once, an event at most once a
        second); the control timer holds once it lasts longer than stall_limit_s."""
        self.stall_reason = reason
        if self.safety.state is self.SafetyState.ENABLED:
            self.safety.report(now, "not_acting", reason)

    def _check_stall(self, now: float) -> None:
        """ENABLED without a new chunk for stall_limit_s (max_latency_s + one execution horizon): hold."""
        since = self.last_chunk_time if self.last_chunk_time is not None else self.enabled_at
        if since is None or now - since <= self.stall_limit_s:
            return
        reason = self.stall_reason or "no chunk from the policy"
        self.safety.refuse(
            now, "stalled", f"no new chunk for {now - since:.2f} s (> {self.stall_limit_s:.2f} s): {reason}"
        )
        self.log.error(f"stalled, arm holds: {reason} (fix the input, then ~/enable)")

    # ------------------------------------------------------------------ control
    def _on_control_timer(self) -> None:
        if not (self.running and self.node.context.ok()):
            return  # shutting down: publishers are gone
        now = self.now()
        self.safety.check_watchdog(now)
        enabled = self.safety.state is self.SafetyState.ENABLED
        if enabled and not self.was_enabled:
            self.enabled_at, self.last_chunk_time = now, None
        if enabled:
            self._check_stall(now)
            enabled = self.safety.state is self.SafetyState.ENABLED
        if enabled:
            self._control_step(source="timer")
        elif self.was_enabled and self.safety.measured_pose is not None:
            self._publish(self.safety.hold_trajectory(now), now)  # stop where the arm is, once
        self.was_enabled = enabled
        self._publish_events()

    def _control_step(self, source: str) -> bool:
        with self.control_lock:
            now = self.now()
            dt = 1.0 / self.config.control_hz
            actions = []  # the actions due from now on, up to k: the next chunk (or tick) replaces the rest
            while len(actions) < self.scheduler.config.n_action_steps:
                action = self.scheduler.action_at(now + len(actions) * dt)
                if action is None:
                    break
                actions.append(action)
            if not actions:
                return False
            with self.lock:
                measurement = self.measurement
            if measurement is None:
                return False
            q_targets, grippers, converged = self.action_space.joint_targets(measurement.q, np.stack(actions))
            if not converged:
                self.safety.counters["ik_not_converged"] = self.safety.counters.get("ik_not_converged", 0) + 1
            times = dt * np.arange(1, len(q_targets) + 1)
            names = [self._to_safety_names[n] for n in self.joint_names]
            safe = self.safety.filter_trajectory(names, q_targets, times, now)
            if safe is None:
                self._publish(self.safety.hold_trajectory(now), now)
                return False
            self._publish(safe, now)
            command = self.gripper_switch.update(float(grippers[0]))
            if command and self.gripper_clients:
                self._command_gripper(command)
            return True

    def _publish(self, trajectory, now: float) -> None:
        msg = self.JointTrajectory()
        msg.header.stamp = s_to_stamp(now)
        safety_to_ours = {v: k for k, v in self._to_safety_names.items()}
        msg.joint_names = [safety_to_ours[n] for n in trajectory.names]
        for q, t in zip(trajectory.positions, trajectory.times, strict=True):
            msg.points.append(
                self.JointTrajectoryPoint(positions=[float(x) for x in q], time_from_start=s_to_duration(float(t)))
            )
        if self.trajectory_client is not None:
            goal = self.FollowJointTrajectory.Goal()
            goal.trajectory = msg
            self._queue_goal(self.trajectory_client, goal, self._on_goal_response)
        else:
            self.trajectory_pub.publish(msg)
        self.published += 1
        self.rate_window.append(time.monotonic())

    def _queue_goal(self, client, goal, done=None) -> None:
        with self.pending_lock:
            self.pending_goals.append((client, goal, done))
        executor = self.node.executor
        if executor is None:  # not spinning yet (or any more): nothing can be sent
            return
        executor.create_task(self._send_pending_goals)

    def _send_pending_goals(self) -> None:
        """Runs in the executor (the guard condition's callback): send the queued action goals."""
        with self.pending_lock:
            pending, self.pending_goals = self.pending_goals, []
        for client, goal, done in pending:
            future = client.send_goal_async(goal)
            if done is not None:
                future.add_done_callback(done)

    def _on_goal_response(self, future) -> None:
        """A controller that refuses goals (e.g. deactivated after a Franka reflex) latches the node."""
        handle = future.result()
        if handle is None or not handle.accepted:
            self._controller_failed(f"{self.config.controller} rejected a trajectory goal")
            return
        handle.get_result_async().add_done_callback(self._on_goal_result)

    def _on_goal_result(self, future) -> None:
        from action_msgs.msg import GoalStatus

        # CANCELED is the normal end of a goal the next one replaced; only an abort is a failure
        response = future.result()
        if response is not None and response.status == GoalStatus.STATUS_ABORTED:
            result = response.result
            self._controller_failed(
                f"{self.config.controller} aborted a trajectory (error_code {result.error_code}: "
                f"{result.error_string or 'no message'})"
            )

    def _controller_failed(self, reason: str) -> None:
        if self.safety.latched_reason is not None:
            return  # already latched: one log line per failure episode
        self.safety.estop(reason, now=self.now())
        self.scheduler.reset()
        self.log.error(f"{reason}: arm commands stopped (latched; recover the robot, then ~/reset and ~/enable)")

    def _command_gripper(self, command: str) -> None:
        c = self.config
        if command == "close":
            goal = self.Grasp.Goal(width=0.0, speed=c.gripper_speed, force=c.grasp_force)
            goal.epsilon.inner, goal.epsilon.outer = 0.005, c.grasp_epsilon_outer
            self._queue_goal(self.gripper_clients["grasp"], goal)
        else:
            self._queue_goal(
                self.gripper_clients["move"], self.Move.Goal(width=c.gripper_open_width, speed=c.gripper_speed)
            )
        self.log.info(f"gripper: {command}")

    # ------------------------------------------------------------------ services
    def _on_enable(self, _request, response):
        outcome = self.safety.enable(self.now())
        response.success, response.message = bool(outcome), outcome.message
        return response

    def _on_estop(self, _request, response):
        outcome = self.safety.estop("e-stop service called", self.now())
        self.scheduler.reset()
        if self.safety.measured_pose is not None:
            self._publish(self.safety.hold_trajectory(self.now()), self.now())
        response.success, response.message = bool(outcome), outcome.message
        return response

    def _on_reset(self, _request, response):
        with self.control_lock:
            self.scheduler.reset()
            self.action_space.reset()
            self.gripper_switch.reset()
            outcome = self.safety.reset(self.now())
        response.success, response.message = bool(outcome), outcome.message
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_events(self) -> None:
        """Each safety event exactly once, in order; a gap (more events than the layer keeps between
        two ticks) is published as an ``events_lost`` event with the count."""
        events, lost = self.safety.events_after(self.last_event_seq)
        if lost:
            self.events_pub.publish(
                self.String(data=json.dumps({"time": self.now(), "kind": "events_lost", "detail": str(lost), "seq": 0}))
            )
        for event in events:
            self.events_pub.publish(
                self.String(
                    data=json.dumps({"time": event.time, "kind": event.kind, "detail": event.detail, "seq": event.seq})
                )
            )
        if events:
            self.last_event_seq = events[-1].seq

    def command_rate_hz(self) -> float:
        t = time.monotonic()
        self.rate_window = [x for x in self.rate_window if t - x <= 2.0]
        return len(self.rate_window) / 2.0

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        state = self.safety.state
        level = {
            self.SafetyState.ENABLED: DiagnosticStatus.OK,
            self.SafetyState.DISABLED: DiagnosticStatus.OK,
            self.SafetyState.HOLD: DiagnosticStatus.WARN,
        }.get(state, DiagnosticStatus.ERROR)
        message = str(self.safety.latched_reason or "") or state.value
        stall = self.stall_reason if state is not self.SafetyState.DISABLED else None
        if stall and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, f"{state.value}, not acting: {stall}"
        if not self.inference_thread.is_alive() and self.running:
            level, message = DiagnosticStatus.ERROR, "inference thread is not running: restart the node"
        values = {
            "state": state.value,
            "latched": str(self.safety.latched_reason or ""),
            "stall": str(stall or ""),
            "max_tracking_error_rad": f"{self.safety.max_tracking_error:.4f}",
            "command_rate_hz": f"{self.command_rate_hz():.1f}",
            "trajectories_published": str(self.published),
        }
        for stage, s in self.latency.summary().items():
            values[f"{stage}.p50"], values[f"{stage}.p99"] = f"{s['p50']:.3f}", f"{s['p99']:.3f}"
        values.update({f"safety.{k}": str(v) for k, v in self.safety.counters.items()})
        values["safety.ee_goal_clipped"] = str(self.action_space.goals_clipped)
        values.update({f"chunks.{k}": str(v) for k, v in self.scheduler.counters.items()})
        status = DiagnosticStatus(
            level=level,
            name="vla_policy",
            message=message,
            hardware_id=self.config.arm_id,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        msg = self.DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    def shutdown(self) -> None:
        self.running = False
        self.inference_thread.join(timeout=2.0)
        self.policy.close()


def _resize(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image as PILImage

    return np.asarray(PILImage.fromarray(image).resize((shape[1], shape[0]), PILImage.BILINEAR))


def main(args: list[str] | None = None) -> int:
    return run_node("vla_policy", PolicyNodeConfig, PolicyNode, args=args, node_set_parameters=NODE_SET_PARAMETERS)


if __name__ == "__main__":
    sys.exit(main())
