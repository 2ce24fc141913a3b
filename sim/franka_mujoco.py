"""A simulated Franka Panda for the ROS 2 graph: a RoboMimic task in MuJoCo, driven the way
franka_ros2 drives the real arm.

The real arm takes JointTrajectory goals through a JointTrajectoryController that
interpolates between timestamped points at 1 kHz; the gripper takes Move/Grasp goals. This
module is that robot without ROS: a robosuite task (Lift, PickPlaceCan, ...) whose arm runs
robosuite's joint-position controller at ``control_hz``, fed from a ``TrajectoryFollower``
that samples the active trajectory, plus a two-state gripper. The ROS node
(ros2_ws/src/vla_ros/vla_ros/sim_franka_node.py) only adds topics, actions and pacing.

Episodes use the same per-episode seeds as ``vla eval`` (``episode_seed(seed, 0, i)``), so the
ROS graph and the simulator evaluation start from identical scenes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from sim.core import EnvConfig, episode_seed
from sim.rendering import DEFAULT_RENDER_QUALITY
from sim.robomimic import JOINT_TARGET_KP

FINGER_OPEN_WIDTH = 0.08  # m, Franka Hand maximum width


@dataclass
class SimFrankaConfig:
    task: str = "robomimic/Lift"
    control_hz: float = 100.0  # arm controller rate (the real JTC runs at 1 kHz; this is its sampled version)
    image_size: int = 84
    render_quality: str = DEFAULT_RENDER_QUALITY  # the camera look (sim/rendering.py)
    cameras: tuple[str, ...] = ("scene", "wrist")
    seed: int = 0  # base seed: episode i starts from episode_seed(seed, 0, i), as in `vla eval`
    joint_kp: float = JOINT_TARGET_KP
    max_joint_step_rad: float = 0.2  # per control step; a real arm would reflex on larger jumps

    def __post_init__(self):
        if self.control_hz <= 0:
            raise ValueError(f"control_hz must be positive, got {self.control_hz}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")


class TrajectoryFollower:
    """What a JointTrajectoryController does with a goal, sampled: linear interpolation.

    A new trajectory replaces the old one from the moment it arrives: the desired position
    moves from where the old one had it to the first point whose time has not passed; points
    whose time already passed are skipped; after the last point the arm holds it.
    """

    def __init__(self, q0: np.ndarray):
        self._lock = threading.Lock()
        self._times = np.array([0.0])
        self._points = np.asarray(q0, dtype=np.float64)[None]

    def hold(self, q: np.ndarray) -> None:
        with self._lock:
            self._times = np.array([0.0])
            self._points = np.asarray(q, dtype=np.float64)[None].copy()

    def set_trajectory(self, points: np.ndarray, times: np.ndarray, now: float) -> int:
        """Install ``points`` (N, 7) at absolute ``times`` (N,); returns how many were skipped as past."""
        points = np.asarray(points, dtype=np.float64)
        times = np.asarray(times, dtype=np.float64)
        if points.ndim != 2 or len(points) != len(times) or len(times) == 0:
            raise ValueError(f"points {points.shape} and times {times.shape} do not match")
        if not np.all(np.isfinite(points)) or not np.all(np.isfinite(times)):
            raise ValueError("trajectory contains NaN or inf")
        future = times > now
        skipped = int((~future).sum())
        with self._lock:
            current = self._sample_locked(now)
            if not future.any():  # every point is in the past: go to (and hold) the last one
                self._times, self._points = np.array([now]), points[-1:].copy()
            else:
                self._times = np.concatenate([[now], times[future]])
                self._points = np.concatenate([current[None], points[future]])
        return skipped

    def sample(self, t: float) -> np.ndarray:
        with self._lock:
            return self._sample_locked(t)

    def _sample_locked(self, t: float) -> np.ndarray:
        times, points = self._times, self._points
        if t <= times[0]:
            return points[0].copy()
        if t >= times[-1]:
            return points[-1].copy()
        i = int(np.searchsorted(times, t, side="right"))
        a = (t - times[i - 1]) / (times[i] - times[i - 1])
        return (1 - a) * points[i - 1] + a * points[i]


class SimulatedFranka:
    """A robosuite Panda task under joint-position control with franka_ros2-like semantics."""

    def __init__(self, config: SimFrankaConfig):
        from sim.registry import split_name
        from sim.robomimic import RobomimicEnv

        suite, task = split_name(config.task)
        if suite.name != "robomimic":
            raise ValueError(
                f"the simulated Franka runs RoboMimic Panda tasks (e.g. robomimic/Lift), got {config.task!r}"
            )
        self.config = config
        self.env = RobomimicEnv(
            EnvConfig(
                name=f"robomimic/{task}",
                obs_mode="state",  # cameras are rendered on demand at the camera rate
                image_size=(config.image_size, config.image_size),
                seed=config.seed,
                render_quality=config.render_quality,
                options={
                    "controller": "JOINT_TARGET",
                    "control_freq": config.control_hz,
                    "joint_kp": config.joint_kp,
                    "max_joint_step": config.max_joint_step_rad,
                },
            )
        )
        if self.env.spec.robot != "panda":
            raise ValueError(f"{config.task} is not a single-Panda task")
        unknown = [c for c in config.cameras if c not in self.env.camera_map]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; available: {', '.join(self.env.camera_map)}")
        self.instruction = self.env.spec.instruction
        self.dt = 1.0 / config.control_hz
        self.episode = -1
        self.gripper_closed = False
        self.success = False
        self.steps = 0
        self._robot = self.env.raw.robots[0]

    # ------------------------------------------------------------------ state
    def joint_positions(self) -> np.ndarray:
        return self.env.joint_positions()

    def joint_velocities(self) -> np.ndarray:
        return np.array(self._robot._joint_velocities, dtype=np.float64)

    def finger_positions(self) -> np.ndarray:
        """Franka convention: both finger joints positive, width = their sum (m)."""
        q = self.env.raw.sim.data.qpos[self._robot._ref_gripper_joint_pos_indexes]
        return np.array([q[0], -q[1]], dtype=np.float64)

    def gripper_width(self) -> float:
        return float(self.finger_positions().sum())

    def render(self, camera: str) -> np.ndarray:
        return self.env.render(camera)

    # ------------------------------------------------------------------ control
    def reset(self, episode: int | None = None) -> int:
        """Start episode ``episode`` (default: the next one); returns its seed."""
        self.episode = self.episode + 1 if episode is None else int(episode)
        seed = episode_seed(self.config.seed, 0, self.episode)
        self.env.reset(seed)
        self.gripper_closed = False
        self.success = False
        self.steps = 0
        return seed

    def step(self, q_desired: np.ndarray) -> bool:
        """Advance one control period toward ``q_desired``; returns the task's success."""
        q_desired = np.asarray(q_desired, dtype=np.float64)
        if q_desired.shape != (7,) or not np.all(np.isfinite(q_desired)):
            raise ValueError(f"q_desired must be 7 finite joint positions, got {q_desired}")
        action = np.concatenate([q_desired, [1.0 if self.gripper_closed else -1.0]])
        _, _, success = self.env.step(action)
        self.steps += 1
        self.success = self.success or success
        return self.success

    def close(self) -> None:
        self.env.close()
