"""ManiSkill 3 (SAPIEN) tabletop tasks with a Panda arm, behind the ``SingleEnv`` contract.

Every task runs with ``control_mode="pd_ee_delta_pose"``: a 7-d action in [-1, 1],
``[dx, dy, dz, drx, dry, drz, gripper]`` (position deltas scaled to +-0.1 m, rotation deltas
to 0.1 rad, both in the robot base frame; gripper +1 open, -1 closed).

Observations (canonical keys, ``vla.keys``):

* ``observation.state``             (16,) float32: Panda qpos (7 arm + 2 finger) and TCP pose
                                     (position xyz, quaternion wxyz) in the world frame.
* ``observation.environment_state`` (E,) float32: the task's flattened state vector, exactly
                                     what ManiSkill's ``obs_mode="state"`` returns (agent
                                     qpos/qvel followed by the task's extra entries).
* ``observation.images.scene``      (H, W, 3) uint8 from the task's ``base_camera`` sensor
                                     (``obs_mode="rgb"``); ``observation.images.wrist`` from
                                     ``hand_camera`` on the tasks whose robot carries one.

Rewards are ManiSkill's ``normalized_dense`` rewards (in [0, 1]) unless
``options["reward_mode"]`` says otherwise; success is ManiSkill's ``info["success"]``.

CPU: one ``physx_cpu`` scene per ``SingleEnv``; ``sim.vector`` runs several in subprocesses.
GPU: ``GpuVectorEnv`` batches ``num_envs`` scenes in one ``physx_cuda`` simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.core import EnvConfig, EnvSpec, SingleEnv, episode_seed, validate_actions
from vla import keys

CONTROL_MODE = "pd_ee_delta_pose"
DEFAULT_REWARD_MODE = "normalized_dense"
# camera role -> ManiSkill sensor uid
SENSOR_OF_ROLE = {keys.CAMERA_SCENE: "base_camera", keys.CAMERA_WRIST: "hand_camera"}


@dataclass(frozen=True)
class _Task:
    instruction: str
    robot: str = "panda"  # ManiSkill robot_uids; panda_wristcam is the same Panda with a hand camera


TASKS: dict[str, _Task] = {
    "PickCube-v1": _Task("pick up the red cube and move it to the green goal"),
    "PushCube-v1": _Task("push the blue cube forward into the red and white target"),
    # StackCube's default robot (and PegInsertionSide's only one) carries a wrist camera.
    "StackCube-v1": _Task("pick up the red cube and stack it on top of the green cube", "panda_wristcam"),
    "PegInsertionSide-v1": _Task(
        "pick up the peg and insert its orange end sideways into the hole in the box", "panda_wristcam"
    ),
    "PullCube-v1": _Task("pull the blue cube back onto the red and white target"),
    "LiftPegUpright-v1": _Task("lift the peg lying on the table and stand it upright"),
    "PokeCube-v1": _Task("grab the peg and use it to push the red cube to the goal target"),
}


def list_tasks() -> list[str]:
    return list(TASKS)


def task_groups() -> dict[str, list[str]]:
    return {
        "core": ["PickCube-v1", "PushCube-v1", "StackCube-v1", "PegInsertionSide-v1"],
        "all": list(TASKS),
    }


def build(config: EnvConfig) -> SingleEnv:
    return ManiSkillEnv(config)


# --------------------------------------------------------------------------- shared helpers


def _import_maniskill():
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401 - registers the tasks

    return gym


def _make_kwargs(config: EnvConfig, num_envs: int, sim_backend: str) -> dict[str, Any]:
    """gym.make arguments shared by the CPU and GPU envs."""
    import torch

    task = config.name.split("/", 1)[1]
    height, width = config.image_size
    options = dict(config.options)
    kwargs = dict(
        num_envs=num_envs,
        # "rgb+state": images plus the same flattened state vector "state" mode returns
        obs_mode="rgb+state" if config.obs_mode == "rgb" else "state",
        control_mode=CONTROL_MODE,
        reward_mode=options.pop("reward_mode", DEFAULT_REWARD_MODE),
        robot_uids=options.pop("robot_uids", TASKS[task].robot),
        sim_backend=sim_backend,
        render_backend="gpu" if torch.cuda.is_available() else "cpu",
        render_mode="rgb_array",
        sensor_configs=dict(width=width, height=height),
        human_render_camera_configs=dict(width=width, height=height),
    )
    kwargs.update(options)  # anything else goes to ManiSkill unchanged
    return kwargs


def _registered_max_steps(task: str) -> int:
    from mani_skill.utils.registration import REGISTERED_ENVS

    return int(REGISTERED_ENVS[task].max_episode_steps)


def _flat_layout(obs_dict: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Offsets of each leaf ("agent/qpos", "extra/tcp_pose", ...) in the flattened state vector.

    Mirrors ``mani_skill.utils.common.flatten_state_dict`` (depth-first, insertion order, one
    column per scalar entry) over ``dict(agent=..., extra=...)``.
    """
    layout: dict[str, tuple[int, int]] = {}
    offset = 0

    def walk(d: dict[str, Any], prefix: str) -> None:
        nonlocal offset
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
                continue
            size = int(np.prod(v.shape[1:])) if v.ndim > 1 else 1
            layout[prefix + k] = (offset, offset + size)
            offset += size

    walk({"agent": obs_dict["agent"], "extra": obs_dict["extra"]}, "")
    return layout


def _proprio_index(layout: dict[str, tuple[int, int]]) -> np.ndarray:
    """Indices of qpos (9) and TCP pose (7) inside the flattened state vector."""
    if "agent/qpos" not in layout or "extra/tcp_pose" not in layout:
        raise RuntimeError(f"state vector lacks agent/qpos or extra/tcp_pose: {list(layout)}")
    q0, q1 = layout["agent/qpos"]
    t0, t1 = layout["extra/tcp_pose"]
    return np.r_[q0:q1, t0:t1]


def _cameras(config: EnvConfig, available: tuple[str, ...]) -> tuple[str, ...]:
    if config.obs_mode != "rgb":
        return ()
    if config.cameras is None:
        return available
    unknown = [c for c in config.cameras if c not in available]
    if unknown:
        raise ValueError(f"{config.name} has no camera {unknown}; available: {', '.join(available)}")
    return tuple(config.cameras)


def _spec(config: EnvConfig, base_env, layout, cameras, render_cameras, max_steps, reward_mode) -> EnvSpec:
    task = config.name.split("/", 1)[1]
    space = base_env.single_action_space
    env_state_dim = max(end for _, end in layout.values())
    return EnvSpec(
        name=config.name,
        action_dim=int(space.shape[0]),
        state_dim=16,
        env_state_dim=env_state_dim,
        max_episode_steps=max_steps,
        fps=int(base_env.control_freq),
        instruction=TASKS[task].instruction,
        obs_mode=config.obs_mode,
        cameras=cameras,
        render_cameras=render_cameras,
        image_size=tuple(config.image_size),
        action_low=tuple(float(x) for x in space.low),
        action_high=tuple(float(x) for x in space.high),
        robot="panda",
        extra={
            "simulator": "maniskill",
            "maniskill_robot": str(base_env.robot_uids),
            "control_mode": CONTROL_MODE,
            "action_layout": "dx dy dz drx dry drz gripper (normalized [-1, 1]; +1 opens)",
            "reward": reward_mode,
            "state_layout": "qpos[0:9] tcp_pos[9:12] tcp_quat_wxyz[12:16]",
            "env_state_layout": {k: list(v) for k, v in layout.items()},
            "sensors": {role: SENSOR_OF_ROLE[role] for role in render_cameras if role != keys.CAMERA_SCENE},
        },
    )


# --------------------------------------------------------------------------- CPU: one scene


class ManiSkillEnv(SingleEnv):
    """One ManiSkill scene on the CPU PhysX backend.

    The gym wrappers are bypassed at step time (the episode bookkeeping lives in
    ``EpisodeRunner``), so a step is ManiSkill's own ``BaseEnv.step`` plus a few numpy views.
    """

    def __init__(self, config: EnvConfig):
        task = config.name.split("/", 1)[1]
        if task not in TASKS:
            raise ValueError(f"unknown ManiSkill task {task!r}; available: {', '.join(TASKS)}")
        gym = _import_maniskill()
        kwargs = _make_kwargs(config, num_envs=1, sim_backend="physx_cpu")
        self._gym_env = gym.make(task, **kwargs)
        self._env = self._gym_env.unwrapped
        self._rgb = config.obs_mode == "rgb"
        self.instruction = TASKS[task].instruction

        layout = _flat_layout(self._env.get_obs(unflattened=True))
        self._proprio_idx = _proprio_index(layout)
        available = tuple(r for r, uid in SENSOR_OF_ROLE.items() if uid in self._env._sensors)
        self._cameras = _cameras(config, available)
        self._sensor_uids = {role: SENSOR_OF_ROLE[role] for role in available}
        max_steps = config.max_episode_steps or _registered_max_steps(task)
        self.spec = _spec(config, self._env, layout, self._cameras, available, max_steps, kwargs["reward_mode"])
        self._action_shape = (self.spec.action_dim,)

    @property
    def raw(self):
        """The unwrapped ManiSkill ``BaseEnv`` (``env.raw.agent``, ``env.raw.cube``, ...)."""
        return self._env

    def _observation(self, obs) -> dict[str, Any]:
        if self._rgb:
            vec = obs["state"][0].numpy()
            images = {role: obs["sensor_data"][self._sensor_uids[role]]["rgb"][0].numpy() for role in self._cameras}
        else:
            vec, images = obs[0].numpy(), None
        return {
            keys.OBS_STATE: vec[self._proprio_idx],
            keys.OBS_ENV_STATE: vec,
            keys.TASK: self.instruction,
            **({keys.image_key(r): im for r, im in images.items()} if images else {}),
        }

    def reset(self, seed: int) -> dict[str, Any]:
        obs, _ = self._env.reset(seed=int(seed))
        return self._observation(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self._action_shape or not np.isfinite(action).all():
            raise ValueError(
                f"action must be a finite array of shape {self._action_shape}; got shape {action.shape}. "
                "Nothing was stepped."
            )
        obs, reward, _, _, info = self._env.step(action)
        return self._observation(obs), float(reward), bool(info["success"])

    def render(self, camera: str) -> np.ndarray:
        """'scene': the task's human render camera (goal markers visible) at ``image_size``;
        'wrist': the hand camera sensor, when the robot has one. Works in any obs mode."""
        if camera == keys.CAMERA_SCENE:
            return self._env.render_rgb_array()[0].numpy()
        if camera in self._sensor_uids:
            return _sensor_rgb(self._env, self._sensor_uids[camera])[0].numpy()
        raise ValueError(f"{self.spec.name} cannot render camera {camera!r}; available: {self.spec.render_cameras}")

    def close(self) -> None:
        if self._gym_env is not None:
            self._gym_env.close()
            self._gym_env = None


def _sensor_rgb(base_env, uid: str):
    """(B, H, W, 3) uint8 torch image from one sensor, outside of the observation path."""
    for obj in base_env._hidden_objects:
        obj.hide_visual()
    base_env.scene.update_render(update_sensors=True, update_human_render_cameras=False)
    sensor = base_env.scene.sensors[uid]
    sensor.capture()
    return sensor.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]


# --------------------------------------------------------------------------- GPU: batched scenes


class GpuVectorEnv:
    """``num_envs`` ManiSkill scenes in one ``physx_cuda`` simulation, with ``VectorEnv``'s API.

    Same batched output as ``sim.vector`` (numpy on the host). Episodes end on success (when
    ``config.terminate_on_success``) or at the time limit, counted here per env.

    Chunks follow ``EpisodeRunner.step_chunk`` exactly: an env whose episode ends inside a
    chunk is *not* reset there. It keeps being stepped (all scenes step together on the GPU)
    but those transitions are discarded, its reward/length stop accumulating, and it is reset
    (a partial reset of only the finished envs) when the chunk is over; the chunk also stops
    early once every env has finished. So no action of a chunk reaches the next episode.

    Approximation: ManiSkill draws a partial reset's initial states from one torch seed for
    all envs reset together, so episode seeds cannot be per env as on the CPU. Each reset
    gets a seed derived from (base seed, reset count), reported as the episode's ``seed``:
    runs repeat for a given base seed and batch size, but episode ``k`` of env ``i`` is not
    the scene that the CPU env builds for ``episode_seed(seed, i, k)``.

    ``expert_actions`` is not available (experts read one unbatched CPU scene).
    """

    def __init__(self, config: EnvConfig, num_envs: int):
        import torch
        from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

        task = config.name.split("/", 1)[1]
        gym = _import_maniskill()
        kwargs = _make_kwargs(config, num_envs=num_envs, sim_backend="physx_cuda")
        self.config = config
        self.num_envs = num_envs
        self._torch = torch
        max_steps = config.max_episode_steps or _registered_max_steps(task)
        gym_env = gym.make(task, max_episode_steps=max_steps, **kwargs)
        # auto_reset is off: finished envs are reset at chunk boundaries (see the class doc)
        self._venv = ManiSkillVectorEnv(
            gym_env, auto_reset=False, ignore_terminations=not config.terminate_on_success, record_metrics=False
        )
        self._env = self._venv.base_env
        self._rgb = config.obs_mode == "rgb"
        self.instruction = TASKS[task].instruction
        layout = _flat_layout(self._env.get_obs(unflattened=True))
        self._proprio_idx = _proprio_index(layout)
        available = tuple(r for r, uid in SENSOR_OF_ROLE.items() if uid in self._env._sensors)
        self._cameras = _cameras(config, available)
        self._sensor_uids = {role: SENSOR_OF_ROLE[role] for role in available}
        self.spec = _spec(config, self._env, layout, self._cameras, available, max_steps, kwargs["reward_mode"])
        self._obs: dict[str, Any] | None = None

    @property
    def raw(self):
        return self._env

    # -- observations
    def _observation(self, obs) -> dict[str, Any]:
        state = obs["state"] if self._rgb else obs
        vec = state.float().cpu().numpy()
        batch: dict[str, Any] = {
            keys.OBS_STATE: vec[:, self._proprio_idx],
            keys.OBS_ENV_STATE: vec,
            keys.TASK: [self.instruction] * self.num_envs,
        }
        for role in self._cameras:
            batch[keys.image_key(role)] = obs["sensor_data"][self._sensor_uids[role]]["rgb"].cpu().numpy()
        return batch

    @staticmethod
    def _row(batch: dict[str, Any], i: int) -> dict[str, Any]:
        return {k: (v[i] if k == keys.TASK else v[i].copy()) for k, v in batch.items()}

    # -- episodes
    def _reset_seed(self) -> int:
        self._reset_count += 1
        return episode_seed(self.config.seed, -1, self._reset_count)

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if seed is not None:
            self.config = EnvConfig(**{**self.config.__dict__, "seed": seed})
        return self.reset_episodes([episode_seed(self.config.seed, i, 0) for i in range(self.num_envs)])

    def reset_episodes(self, seeds) -> dict[str, Any]:
        """Every env starts an episode, seeded per env with ``seeds`` (ManiSkill seeds each
        parallel env's episode RNG; tasks that draw from the global torch RNG see only the
        first, so equal seeds give equal scenes only where the task uses the episode RNG)."""
        n = self.num_envs
        if len(seeds) != n:
            raise ValueError(f"need {n} seeds, got {len(seeds)}")
        self._reset_count = 0
        self._seeds = np.asarray(seeds, dtype=np.int64)
        self._episode_index = np.zeros(n, dtype=np.int64)
        self._return = np.zeros(n, dtype=np.float64)
        self._length = np.zeros(n, dtype=np.int64)
        self._success_once = np.zeros(n, dtype=bool)
        obs, _ = self._venv.reset(seed=[int(s) for s in self._seeds])
        self._obs = self._observation(obs)
        return self._obs

    def step(self, actions: Any):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        torch = self._torch
        chunk = validate_actions(actions, self.num_envs, self.spec.action_dim)
        n, horizon = self.num_envs, chunk.shape[1]
        chunk_t = torch.as_tensor(chunk, device=self._env.device)
        active = np.ones(n, dtype=bool)
        reward_sum = np.zeros(n, dtype=np.float32)
        steps = np.zeros(n, dtype=np.int64)
        success = np.zeros(n, dtype=bool)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final_obs: list[dict | None] = [None] * n
        episodes: list[dict | None] = [None] * n
        batch = self._obs
        for h in range(horizon):
            obs, reward, term, _, info = self._venv.step(chunk_t[:, h])
            batch = self._observation(obs)
            reward = reward.float().cpu().numpy()
            succ = info["success"].cpu().numpy().astype(bool)
            term = term.cpu().numpy().astype(bool)  # success (ignored when not terminating on success)
            idx = np.flatnonzero(active)
            reward_sum[idx] += reward[idx]
            steps[idx] += 1
            success[idx] = succ[idx]
            self._return[idx] += reward[idx]
            self._length[idx] += 1
            self._success_once[idx] |= succ[idx]
            terminated[idx] = term[idx]
            truncated[idx] = ~term[idx] & (self._length[idx] >= self.spec.max_episode_steps)
            for i in idx[terminated[idx] | truncated[idx]]:
                final_obs[i] = self._row(batch, i)
                episodes[i] = {
                    "success": bool(self._success_once[i]),
                    "return": float(self._return[i]),
                    "length": int(self._length[i]),
                    "seed": int(self._seeds[i]),
                    "index": int(self._episode_index[i]),
                }
                active[i] = False
            if not active.any():
                break
        episode_seeds = self._seeds.copy()
        done = ~active
        if done.any():
            env_idx = torch.as_tensor(np.flatnonzero(done), device=self._env.device)
            seed = self._reset_seed()
            obs, _ = self._venv.reset(seed=seed, options=dict(env_idx=env_idx))
            batch = self._observation(obs)
            self._seeds[done] = seed
            self._episode_index[done] += 1
            self._return[done] = 0.0
            self._length[done] = 0
            self._success_once[done] = False
        self._obs = batch
        info = {
            "success": success,
            "steps": steps,
            "episode_seed": episode_seeds,
            "final_observation": final_obs,
            "episode": episodes,
        }
        return batch, reward_sum, terminated, truncated, info

    def expert_actions(self) -> np.ndarray:
        raise NotImplementedError("scripted experts run on CPU envs; use vectorization='subprocess'")

    def render(self, camera: str) -> np.ndarray:
        """(B, H, W, 3) uint8 frames; 'scene' is the human render camera, in any obs mode."""
        if camera == keys.CAMERA_SCENE:
            images = self._env.render_rgb_array()
        elif camera in self._sensor_uids:
            images = _sensor_rgb(self._env, self._sensor_uids[camera])
        else:
            raise ValueError(f"{self.spec.name} cannot render camera {camera!r}; available: {self.spec.render_cameras}")
        return images.cpu().numpy()

    def close(self) -> None:
        if self._venv is not None:
            self._venv.close()
            self._venv = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
