"""RoboMimic tasks on robosuite (MuJoCo) with Panda arms and RoboMimic's OSC_POSE controller.

Action (per arm): 3 position deltas + 3 axis-angle rotation deltas in [-1, 1] (scaled by the
controller to 5 cm / 0.5 rad per step) + 1 gripper command (-1 open, +1 close), at 20 Hz.

Lift, PickPlaceCan and NutAssemblySquare run on robosuite 1.4 in this process. robosuite 1.4
has no TwoArmTransport or ToolHang (they arrived in robosuite 1.5, which cannot live beside
the 1.4 that LIBERO pins), so those two run on robosuite 1.5 in a sidecar virtual environment,
always in subprocess workers (see ``worker_python``); their observations are identical in form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.core import EnvConfig, EnvSpec, SingleEnv, make_observation
from sim.rendering import EnvCameras
from sim.robosuite_util import hidden_geom_groups, import_robosuite
from vla import keys


@dataclass(frozen=True)
class RobomimicTask:
    env_name: str
    instruction: str
    horizon: int  # RoboMimic's evaluation horizon
    robots: tuple[str, ...] = ("Panda",)
    cameras: tuple[tuple[str, str], ...] = ((keys.CAMERA_SCENE, "agentview"), (keys.CAMERA_WRIST, "robot0_eye_in_hand"))
    needs_robosuite15: bool = False
    env_kwargs: tuple[tuple[str, object], ...] = ()


TASKS: dict[str, RobomimicTask] = {
    "Lift": RobomimicTask("Lift", "lift the red cube off the table", 400),
    "PickPlaceCan": RobomimicTask("PickPlaceCan", "pick up the can and place it in its bin", 400),
    "NutAssemblySquare": RobomimicTask("NutAssemblySquare", "fit the square nut onto the square peg", 400),
    "TwoArmTransport": RobomimicTask(
        "TwoArmTransport",
        "lift the hammer out of one bin with one arm and hand it over into the other bin",
        700,
        robots=("Panda", "Panda"),
        cameras=(
            (keys.CAMERA_SCENE, "shouldercamera0"),
            (keys.CAMERA_WRIST, "robot0_eye_in_hand"),
            ("wrist_right", "robot1_eye_in_hand"),
        ),
        needs_robosuite15=True,
        env_kwargs=(("env_configuration", "opposed"),),  # arms on either side of the tables
    ),
    "ToolHang": RobomimicTask(
        "ToolHang",
        "insert the hook into the stand and hang the wrench on the hook",
        700,
        cameras=((keys.CAMERA_SCENE, "sideview"), (keys.CAMERA_WRIST, "robot0_eye_in_hand")),
        needs_robosuite15=True,
    ),
}

FPS = 20


def list_tasks() -> list[str]:
    return list(TASKS)


def task_groups() -> dict[str, list[str]]:
    return {"robomimic": list(TASKS)}


def sidecar_python() -> Path:
    """The robosuite 1.5 sidecar interpreter made by scripts/setup_env.sh."""
    override = os.environ.get("VLA_ROBOSUITE15_PYTHON")
    if override:
        return Path(override)
    cache = Path(os.environ.get("VLA_CACHE_DIR", Path.home() / ".cache" / "vla-stack"))
    return cache / "robosuite15" / "bin" / "python"


def worker_python(task: str) -> str | None:
    if not TASKS[task].needs_robosuite15:
        return None
    python = sidecar_python()
    if not python.exists():
        raise RuntimeError(
            f"robomimic/{task} needs the robosuite 1.5 sidecar environment, not found at {python}. "
            "Run `make setup` (scripts/setup_env.sh builds it) or set VLA_ROBOSUITE15_PYTHON."
        )
    return str(python)


def _is_robosuite15(version: str) -> bool:
    return tuple(int(x) for x in version.split(".")[:2]) >= (1, 5)


ARM_CONTROLLERS = ("OSC_POSE", "JOINT_POSITION", "JOINT_TARGET")
ENV_OPTIONS = ("controller", "control_freq", "joint_kp", "max_joint_step", "reward_shaping")
# robosuite's joint controller multiplies kp (1/s^2) by the mass matrix. Its default 150 lags a
# target by ~0.07 rad on Lift's demonstration motions (half a step); a JointTrajectoryController
# on a Franka tracks within millimetres, and joint-target policies are trained on where the arm
# went, so JOINT_TARGET defaults to a stiff 1000 (~0.02 rad lag, critically damped).
JOINT_TARGET_KP = 1000.0


def _controller_config(v15: bool, controller: str = "OSC_POSE", joint_kp: float = 150.0) -> dict:
    """The arm controller (with its gripper), in robosuite 1.4's or 1.5's API.

    OSC_POSE is RoboMimic's (the datasets' action space). JOINT_POSITION's action is the
    joint-position change in rad, unscaled. JOINT_TARGET runs the same controller but takes
    absolute joint positions (rad) + the gripper command, like the setpoints a
    JointTrajectoryController interpolates: the action space of policies deployed on a real
    Franka through ROS (sim/franka_mujoco.py, hardware/deployment.py's joint_position).
    """
    if controller not in ARM_CONTROLLERS:
        raise ValueError(f"unknown arm controller {controller!r}; available: {', '.join(ARM_CONTROLLERS)}")
    if controller in ("JOINT_POSITION", "JOINT_TARGET"):
        if v15:
            raise ValueError("the JOINT_POSITION option is implemented for robosuite 1.4 tasks only")
        from robosuite.controllers import load_controller_config

        config = load_controller_config(default_controller="JOINT_POSITION")
        config.update(input_max=1.0, input_min=-1.0, output_max=1.0, output_min=-1.0, kp=joint_kp)
        return config
    if not v15:
        from robosuite.controllers import load_controller_config

        return load_controller_config(default_controller="OSC_POSE")
    from robosuite.controllers import load_composite_controller_config

    # The Panda's default composite ("BASIC": OSC_POSE right arm + GRIP) takes deltas in the
    # robot base frame; RoboMimic's robosuite 1.5 datasets (and 1.4's OSC) use the world frame,
    # which differs for TwoArmTransport's arms, rotated by +-90 degrees.
    config = load_composite_controller_config(robot="Panda")
    config["body_parts"]["right"]["input_ref_frame"] = "world"
    return config


def _check_version(task: RobomimicTask, version: str) -> None:
    if task.needs_robosuite15 and not version.startswith("1.5"):
        raise RuntimeError(
            f"{task.env_name} needs robosuite 1.5 (found {version}); make_env runs it in the sidecar venv"
        )


class RobomimicEnv(SingleEnv):
    def __init__(self, config: EnvConfig):
        robosuite = import_robosuite()

        task_name = config.name.split("/", 1)[1]
        self.task = TASKS[task_name]
        _check_version(self.task, robosuite.__version__)
        v15 = _is_robosuite15(robosuite.__version__)
        self.obs_mode = config.obs_mode
        self.image_size = config.image_size
        camera_map = dict(self.task.cameras)
        wanted = config.cameras or tuple(camera_map)
        unknown = [c for c in wanted if c not in camera_map]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown} for {config.name}; available: {', '.join(camera_map)}")
        self.camera_map = camera_map
        self.cameras = tuple(wanted) if config.obs_mode == "rgb" else ()
        height, width = config.image_size
        sim_cameras = [camera_map[c] for c in self.cameras]
        robots = list(self.task.robots)
        # Some objects are sized at model-build time from a random generator (Lift's cube,
        # Transport's hammer): numpy's global one in robosuite 1.4, the env's own (`seed`) in
        # 1.5. We build once and soft-reset (a hard reset re-creates the renderer: ~1.2 s), so
        # seed the build: the same config gives the same objects. robosuite 1.5's default
        # `lite_physics` skips a forward pass per substep; RoboMimic's 1.5 datasets turn it off.
        np.random.seed(config.seed)
        version_kwargs = {"seed": config.seed, "lite_physics": False} if v15 else {}
        unknown_options = set(config.options) - set(ENV_OPTIONS)
        if unknown_options:
            raise ValueError(f"unknown option(s) {sorted(unknown_options)}; available: {', '.join(ENV_OPTIONS)}")
        controller = str(config.options.get("controller", "OSC_POSE"))
        shaped = str(config.options.get("reward_shaping", "false")).lower() in ("1", "true", "yes")
        self.controller = controller
        self.max_joint_step = float(config.options.get("max_joint_step", 0.2))  # rad per step, JOINT_TARGET
        control_freq = float(config.options.get("control_freq", FPS))
        self._env = robosuite.make(
            self.task.env_name,
            robots=robots if len(robots) > 1 else robots[0],
            controller_configs=_controller_config(
                v15,
                controller,
                float(config.options.get("joint_kp", JOINT_TARGET_KP if controller == "JOINT_TARGET" else 150.0)),
            ),
            has_renderer=False,
            has_offscreen_renderer=False,  # sim/rendering.py draws every camera image
            use_camera_obs=False,
            camera_names=sim_cameras or "agentview",
            camera_heights=height,
            camera_widths=width,
            control_freq=control_freq,
            horizon=10**6,  # EpisodeRunner owns the time limit
            ignore_done=True,
            hard_reset=False,  # reloading the XML every episode costs ~0.5 s and changes nothing
            reward_shaping=shaped,  # robosuite's staged dense reward (reach, grasp, lift), for RL
            **version_kwargs,
            **dict(self.task.env_kwargs),
        )
        low, high = self._env.action_spec
        if controller == "JOINT_TARGET":  # absolute targets within the joint range, then the gripper
            if len(robots) > 1:
                raise ValueError("the JOINT_TARGET controller is implemented for single-arm tasks")
            robot = self._env.robots[0]
            joint_range = self._env.sim.model.jnt_range[robot._ref_joint_indexes]
            low = np.concatenate([joint_range[:, 0], low[-1:]])
            high = np.concatenate([joint_range[:, 1], high[-1:]])
        self._robot_prefixes = [f"robot{i}_" for i in range(len(robots))]
        self._cameras = EnvCameras(
            lambda: (self._env.sim.model._model, self._env.sim.data._data),
            camera_map,
            tuple(config.image_size),
            config.render_quality,
            hidden_geom_groups=hidden_geom_groups(self._env),
        )
        first = self._env.reset()
        self.spec = EnvSpec(
            name=config.name,
            action_dim=int(low.shape[0]),
            state_dim=16 * len(robots),
            env_state_dim=int(first["object-state"].shape[0]),
            max_episode_steps=config.max_episode_steps or self.task.horizon,
            fps=int(round(control_freq)),
            instruction=self.task.instruction,
            obs_mode=config.obs_mode,
            cameras=self.cameras,
            render_cameras=tuple(camera_map),
            image_size=tuple(config.image_size),
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            robot="panda" if len(robots) == 1 else "panda_x2",
            render_quality=self._cameras.quality,
            extra={
                "robosuite_version": robosuite.__version__,
                "controller": controller,
                "reward": "shaped" if shaped else "sparse",
            },
        )
        self.last_raw_obs = first

    @property
    def raw(self):
        return self._env

    def _observation(self, raw: dict) -> dict:
        self.last_raw_obs = raw
        parts = []
        for robot, p in zip(self._env.robots, self._robot_prefixes, strict=True):
            parts += [
                # The joint angles themselves, not atan2 of robosuite's sin/cos observation: that
                # wraps at +-pi, and the Panda's joint 6 (range -0.02..3.75 rad) crosses pi in
                # Lift, which would make both the state and joint-target labels jump by 2 pi.
                np.asarray(robot._joint_positions, dtype=np.float64),
                raw[p + "eef_pos"],
                raw[p + "eef_quat"],
                raw[p + "gripper_qpos"],
            ]
        images = self._cameras.images(self.cameras) if self.cameras else None
        return make_observation(np.concatenate(parts), raw["object-state"], self.task.instruction, images)

    def reset(self, seed: int) -> dict:
        np.random.seed(seed)  # robosuite's placement samplers draw from numpy's global RNG
        if hasattr(self._env, "rng"):
            # robosuite 1.5 keeps its own generator and hands it to the robots, the samplers and
            # some objects (Transport's hammer draws its flip at every reset): reseed it in place
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            for sampler in _placement_samplers(self._env):
                sampler.rng = self._env.rng
        obs = self._env.reset()
        _reset_gripper_commands(self._env)
        return self._observation(obs)

    def joint_positions(self) -> np.ndarray:
        """The (first) arm's joint positions, rad."""
        return np.array(self._env.robots[0]._joint_positions, dtype=np.float64)

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if self.controller == "JOINT_TARGET":  # absolute -> the controller's delta, at most max_joint_step
            delta = np.clip(action[:7] - self.joint_positions(), -self.max_joint_step, self.max_joint_step)
            action = np.concatenate([delta, action[7:]])
        raw, reward, _, _ = self._env.step(action)
        return self._observation(raw), float(reward), bool(self._env._check_success())

    def raw_step(self, action: np.ndarray) -> None:
        """robosuite's step plus, in rgb mode, the camera images (as robosuite's camera
        observables would render them), for `vla bench sim`."""
        self._env.step(action)
        if self.cameras:
            self._cameras.images(self.cameras)

    def render(self, camera: str) -> np.ndarray:
        if camera not in self.camera_map:
            raise ValueError(f"unknown camera {camera!r}; available: {', '.join(self.camera_map)}")
        return self._cameras.images([camera])[camera]

    def close(self) -> None:
        self._cameras.close()
        self._env.close()


def _placement_samplers(env) -> list:
    sampler = getattr(env, "placement_initializer", None)
    if sampler is None:
        return []
    return [sampler, *getattr(sampler, "samplers", {}).values()]


def build(config: EnvConfig) -> SingleEnv:
    return RobomimicEnv(config)


def _reset_gripper_commands(env) -> None:
    """Grippers integrate their command (``current_action``) and a soft reset (hard_reset=False)
    keeps it, so an episode depended on the previous one's last gripper command: the same seed
    then gave another trajectory. Start every episode from the fresh model's zero command."""
    for robot in env.robots:
        grippers = robot.gripper.values() if isinstance(robot.gripper, dict) else [robot.gripper]
        for gripper in grippers:
            if hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros(gripper.dof)
