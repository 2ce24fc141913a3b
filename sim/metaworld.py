"""Meta-World v3 (MuJoCo, Sawyer): every MT1 task as ``metaworld/<task>``, e.g. ``metaworld/pick-place-v3``.

One env is built the way Meta-World's MT1 benchmark builds it: goal-observable (the goal
position is in the last 3 of the 39 observation dims), with the benchmark's 50 train goal
variations. The variations are generated once per env from ``options["benchmark_seed"]``
(default 0), so every process gets the same 50. ``reset(seed)`` uses variation
``seed % 50`` and seeds the env's RNG with ``seed``: the same seed gives the same first
observation.

Observations: ``observation.state`` = hand xyz + gripper opening (``obs[:4]``),
``observation.environment_state`` = the full 39-d observation. Cameras: ``scene``
(``options["scene_camera"]``, default ``corner4``: the view LeRobot's Meta-World datasets
use) and ``wrist`` (``gripperPOV``); ``render()`` also draws any of Meta-World's own cameras
by name. Meta-World's ``corner*`` cameras are rolled upside down in the XML, so their frames
are rotated 180 degrees (not mirrored) to come out upright. Actions: 4-d in [-1, 1]
(xyz delta of the hand, gripper effort). Control runs at 80 Hz (5 frames of 2.5 ms).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sim.core import EnvConfig, EnvSpec, SingleEnv, make_observation
from sim.rendering import EnvCameras
from vla import keys
from vla.registry import UnknownNameError, unknown_name_message

# Camera roles -> Meta-World camera names (defaults; "scene" can be changed per env).
DEFAULT_SCENE_CAMERA = "corner4"
WRIST_CAMERA = "gripperPOV"
# Cameras whose image "up" axis points down in the world: rotate their frames by 180 degrees.
_UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})


def _rotate_180(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::-1, ::-1])


# A readable instruction per task (paraphrasing the task descriptions of the Meta-World paper).
INSTRUCTIONS = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the basketball and dunk it into the hoop",
    "bin-picking-v3": "pick up the puck from one bin and place it into the other bin",
    "box-close-v3": "pick up the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top, reaching past the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button from the front, reaching past the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial half a turn",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close the faucet",
    "faucet-open-v3": "turn the faucet handle to open the faucet",
    "hammer-v3": "pick up the hammer and hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side-v3": "pull the peg out of the hole sideways",
    "pick-out-of-hole-v3": "pick the puck up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, carry it over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "plate-slide-back-v3": "slide the plate back out of the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "pull the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "move the gripper to the goal position",
    "reach-wall-v3": "move the gripper over the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "soccer-v3": "push the soccer ball into the goal",
    "stick-pull-v3": "grasp the stick and use it to pull the box to the goal",
    "stick-push-v3": "grasp the stick and use it to push the box to the goal",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}


def instruction(task: str) -> str:
    """The language instruction of a task (a name-based sentence for tasks not in the table)."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    words = task.removesuffix("-v3").replace("-", " ")
    return f"perform the {words} task"


@lru_cache(maxsize=1)
def _env_dict():
    import metaworld.env_dict

    return metaworld.env_dict


def list_tasks() -> list[str]:
    return list(_env_dict().ALL_V3_ENVIRONMENTS)


def task_groups() -> dict[str, list[str]]:
    """Meta-World's multi-task benchmarks, as listed by the installed package."""
    env_dict = _env_dict()
    return {"MT10": list(env_dict.MT10_V3), "MT50": list(env_dict.MT50_V3)}


def build(config: EnvConfig) -> SingleEnv:
    return MetaWorldEnv(config)


class MetaWorldEnv(SingleEnv):
    """One Meta-World v3 env with MT1's 50 goal variations; unbatched, canonical keys."""

    def __init__(self, config: EnvConfig):
        import metaworld
        import mujoco

        self.config = config
        self.task = config.name.split("/", 1)[1]
        if self.task not in _env_dict().ALL_V3_ENVIRONMENTS:
            raise UnknownNameError(unknown_name_message("metaworld task", self.task, list_tasks()))
        options = dict(config.options)
        benchmark = metaworld.MT1(self.task, seed=int(options.get("benchmark_seed", 0)))
        self._variations = list(benchmark.train_tasks)
        self._env = benchmark.train_classes[self.task]()
        self._env.set_task(self._variations[0])  # Meta-World refuses to reset before a task is set
        self._variation = 0

        max_steps = int(config.max_episode_steps or self._env.max_path_length)
        # Meta-World raises past max_path_length; our runner enforces the time limit.
        self._env.max_path_length = max(self._env.max_path_length, max_steps)

        model = self._env.model
        self._model_cameras = tuple(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam))
        scene = options.get("scene_camera", DEFAULT_SCENE_CAMERA)
        if scene not in self._model_cameras:
            raise ValueError(f"unknown Meta-World camera {scene!r}; available: {', '.join(self._model_cameras)}")
        self._roles = {keys.CAMERA_SCENE: scene, keys.CAMERA_WRIST: WRIST_CAMERA}
        render_cameras = tuple(self._roles) + self._model_cameras
        cameras: tuple[str, ...] = ()
        if config.obs_mode == "rgb":
            cameras = tuple(config.cameras) if config.cameras else tuple(self._roles)
            for camera in cameras:
                if camera not in render_cameras:
                    raise ValueError(
                        f"unknown camera {camera!r} for {config.name}; available: {', '.join(render_cameras)}"
                    )
        self._obs_cameras = cameras
        self._cameras = EnvCameras(
            lambda: (self._env.model, self._env.data),
            self._roles,
            tuple(config.image_size),
            config.render_quality,
            transforms=dict.fromkeys(_UPSIDE_DOWN_CAMERAS & set(self._model_cameras), _rotate_180),
        )
        self._instruction = instruction(self.task)
        self.last_raw_obs: np.ndarray | None = None

        self.spec = EnvSpec(
            name=config.name,
            action_dim=4,
            state_dim=4,
            env_state_dim=int(self._env.observation_space.shape[0]),
            max_episode_steps=max_steps,
            fps=int(round(1.0 / (self._env.frame_skip * model.opt.timestep))),
            instruction=self._instruction,
            obs_mode=config.obs_mode,
            cameras=cameras,
            render_cameras=render_cameras,
            image_size=tuple(config.image_size),
            action_low=(-1.0,) * 4,
            action_high=(1.0,) * 4,
            robot="sawyer",
            render_quality=self._cameras.quality,
            extra={
                "benchmark": "MT1",
                "num_variations": len(self._variations),
                "benchmark_seed": int(options.get("benchmark_seed", 0)),
                "scene_camera": scene,
                "wrist_camera": WRIST_CAMERA,
            },
        )

    # ------------------------------------------------------------------ SingleEnv
    def reset(self, seed: int) -> dict[str, Any]:
        index = int(seed) % len(self._variations)
        self._env.set_task(self._variations[index])
        self._variation = index
        self._env.seed(int(seed))
        raw, _ = self._env.reset()
        self.last_raw_obs = raw
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        raw, reward, _, _, info = self._env.step(action)
        self.last_raw_obs = raw
        return self._observation(raw), float(reward), bool(info["success"])

    def raw_step(self, action: np.ndarray) -> None:
        """Meta-World's step plus, in rgb mode, MuJoCo's own renders of the same cameras."""
        self._env.step(action)
        if self._obs_cameras:
            self._cameras.images(self._obs_cameras)

    def render(self, camera: str) -> np.ndarray:
        name = self._roles.get(camera, camera)
        if name not in self._model_cameras:
            raise ValueError(
                f"unknown camera {camera!r} for {self.spec.name}; available: {', '.join(self.spec.render_cameras)}"
            )
        return self._cameras.images([camera])[camera]

    def close(self) -> None:
        self._cameras.close()
        self._env.close()

    @property
    def raw(self):
        return self._env

    @property
    def variation(self) -> int:
        """Index of the goal variation of the current episode (0..49)."""
        return self._variation

    # ------------------------------------------------------------------ internals
    def _observation(self, raw: np.ndarray) -> dict[str, Any]:
        env_state = raw.astype(np.float32)
        images = self._cameras.images(self._obs_cameras) if self._obs_cameras else None
        return make_observation(env_state[:4], env_state, self._instruction, images)
