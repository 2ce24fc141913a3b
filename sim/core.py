"""The contract every simulator adapter meets, and the episode bookkeeping they all share.

A *suite adapter* (ManiSkill, robosuite/RoboMimic, LIBERO, Meta-World) implements ``SingleEnv``:
one simulator instance, unbatched numpy in and out, in canonical keys (``vla.keys``).
``EpisodeRunner`` adds what is the same for every suite (seeding per episode, success,
return, length, time limit, auto-reset keeping the final observation, action chunks), and
``sim.vector`` batches runners in-process or in subprocesses.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.rendering import DEFAULT_RENDER_QUALITY
from vla import keys
from vla.seeding import derived_seed

OBS_MODES = ("state", "rgb")


@dataclass(frozen=True)
class EnvSpec:
    """What a policy, a dataset writer or a benchmark needs to know about an environment."""

    name: str  # "<suite>/<task>"
    action_dim: int
    state_dim: int
    env_state_dim: int
    max_episode_steps: int
    fps: int
    instruction: str
    obs_mode: str = "state"
    cameras: tuple[str, ...] = ()  # camera roles present in observations (rgb mode)
    render_cameras: tuple[str, ...] = ()  # cameras render() can draw, in any obs mode
    image_size: tuple[int, int] = (128, 128)  # (height, width)
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    robot: str = "panda"
    render_quality: str | None = None  # the camera look (sim/rendering.py); None: the suite has no such choice
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suite(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def task(self) -> str:
        return self.name.split("/", 1)[1]


@dataclass(frozen=True)
class EnvConfig:
    """Arguments of ``make_env`` that every suite understands (picklable, sent to workers)."""

    name: str
    obs_mode: str = "state"
    image_size: tuple[int, int] = (128, 128)
    cameras: tuple[str, ...] | None = None  # None: the suite's default cameras
    seed: int = 0
    max_episode_steps: int | None = None  # None: the suite's default horizon
    terminate_on_success: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # suite-specific extras
    render_quality: str = DEFAULT_RENDER_QUALITY  # MuJoCo suites' camera look (sim/rendering.py)


class SingleEnv(abc.ABC):
    """One simulator instance. Observations are unbatched dicts in canonical keys."""

    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int) -> dict[str, Any]:
        """Start an episode whose randomness is fully determined by ``seed``."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        """Apply one action; return (observation, reward, success)."""

    @abc.abstractmethod
    def render(self, camera: str) -> np.ndarray:
        """An (H, W, 3) uint8 image from one of ``spec.render_cameras``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def raw(self) -> Any:
        """The underlying simulator object (for scripted experts)."""
        raise NotImplementedError

    # The simulator's own step without our wrapper, for `vla bench sim`'s side-by-side numbers.
    def raw_step(self, action: np.ndarray) -> None:
        self.raw.step(action)


def episode_seed(base_seed: int, env_index: int, episode_index: int) -> int:
    """Seed of one episode: independent of how many envs run and of timing, so runs repeat."""
    return derived_seed(base_seed, env_index, episode_index)


def validate_actions(actions: Any, num_envs: int, action_dim: int) -> np.ndarray:
    """Refuse wrong shapes and non-finite values before anything reaches a simulator.

    Returns float32 ``(B, H, A)`` (a single step becomes a chunk of length 1).
    """
    arr = np.asarray(actions, dtype=np.float32) if not hasattr(actions, "detach") else actions.detach().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[0] != num_envs or arr.shape[2] != action_dim or arr.shape[1] < 1:
        raise ValueError(
            f"actions must have shape (num_envs={num_envs}, {action_dim}) or "
            f"(num_envs={num_envs}, chunk, {action_dim}); got {tuple(np.shape(actions))}. Nothing was stepped."
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"actions contain NaN or inf (first at env {bad[0]}, chunk step {bad[1]}, dim {bad[2]}). Nothing was stepped."
        )
    return arr


class EpisodeRunner:
    """Episode bookkeeping around a ``SingleEnv``: the same for every suite.

    Episode ``k`` of env ``i`` is seeded with ``episode_seed(seed, i, k)``. An episode ends
    on success (when ``terminate_on_success``) or at the time limit; the env then resets at
    once and the last observation of the finished episode is returned in
    ``info["final_observation"]``.
    """

    def __init__(self, env: SingleEnv, config: EnvConfig, env_index: int):
        self.env = env
        self.config = config
        self.env_index = env_index
        self.max_steps = env.spec.max_episode_steps
        self.episode_index = -1
        self.obs: dict[str, Any] | None = None
        self._return = 0.0
        self._length = 0
        self._success_once = False

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if seed is not None:  # a new base seed restarts the episode sequence
            self.config = EnvConfig(**{**self.config.__dict__, "seed": seed})
            self.episode_index = -1
        self.episode_index += 1
        return self._start_episode(episode_seed(self.config.seed, self.env_index, self.episode_index))

    def reset_episode(self, seed: int) -> dict[str, Any]:
        """Start an episode from exactly this simulator seed (envs given the same seed start
        in the same state: GRPO's groups, fixed evaluation sets)."""
        self.episode_index += 1
        return self._start_episode(int(seed))

    def _start_episode(self, seed: int) -> dict[str, Any]:
        self._return, self._length, self._success_once = 0.0, 0, False
        self.current_seed = seed
        self.obs = self.env.reset(seed)
        return self.obs

    def step_chunk(self, chunk: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Execute actions of a (H, A) chunk until it ends or the episode does.

        Actions left in a chunk when an episode ends are dropped, never applied to the next
        episode. Returns (obs, summed reward, terminated, truncated, info).
        """
        if self.obs is None:
            raise RuntimeError("call reset() before step()")
        reward_sum = 0.0
        terminated = truncated = False
        steps = 0
        success = False
        for action in chunk:
            self.obs, reward, success = self.env.step(action)
            steps += 1
            reward_sum += float(reward)
            self._return += float(reward)
            self._length += 1
            self._success_once |= bool(success)
            terminated = bool(success) and self.config.terminate_on_success
            truncated = not terminated and self._length >= self.max_steps
            if terminated or truncated:
                break
        info: dict[str, Any] = {"success": bool(success), "steps": steps, "episode_seed": self.current_seed}
        if terminated or truncated:
            info["final_observation"] = self.obs
            info["episode"] = {
                "success": self._success_once,
                "return": self._return,
                "length": self._length,
                "seed": self.current_seed,
                "index": self.episode_index,
            }
            self.reset()
        return self.obs, reward_sum, terminated, truncated, info


def check_obs_mode(obs_mode: str) -> None:
    if obs_mode not in OBS_MODES:
        raise ValueError(f"unknown obs_mode {obs_mode!r}; available: {', '.join(OBS_MODES)}")


def make_observation(
    state: np.ndarray, env_state: np.ndarray, instruction: str, images: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Assemble one unbatched observation dict in canonical keys."""
    obs: dict[str, Any] = {
        keys.OBS_STATE: np.asarray(state, dtype=np.float32),
        keys.OBS_ENV_STATE: np.asarray(env_state, dtype=np.float32),
        keys.TASK: instruction,
    }
    if images:
        for camera, image in images.items():
            obs[keys.image_key(camera)] = image
    return obs
