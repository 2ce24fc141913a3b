"""Scripted demonstrations from parallel simulators into a LeRobot v3 dataset.

Each env's frames are buffered until its episode ends; a finished episode (successful
ones only, unless ``keep_failures``) is written whole. Ctrl-C or SIGTERM finalizes the
dataset, so an interrupted run loses at most the episodes in progress.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from sim.rendering import DEFAULT_RENDER_QUALITY
from vla import keys
from vla.datasets.lerobot_io import EpisodeWriter, check_dataset_dir, features_from_spec, make_frame
from vla.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    env: str = field(default="robomimic/Lift", metadata={"help": "<suite>/<task> with a scripted expert (vla envs)"})
    episodes: int = field(default=50, metadata={"help": "episodes to add to the dataset"})
    out: Path | None = field(default=None, metadata={"help": "dataset directory; default data/datasets/<suite>_<task>"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators (subprocesses)"})
    obs_mode: Literal["rgb", "state"] = field(default="rgb", metadata={"help": "rgb (cameras + state) or state"})
    image_size: int = field(default=84, metadata={"help": "camera images are image_size x image_size"})
    cameras: tuple[str, ...] | None = field(default=None, metadata={"help": "camera roles; default: all of the task's"})
    render_quality: str = field(
        default=DEFAULT_RENDER_QUALITY,
        metadata={
            "help": "camera look of the MuJoCo suites: fast, or default (MuJoCo's own, ~15x slower); "
            "stored with the dataset (docs/rendering.md)"
        },
    )
    seed: int = field(default=0, metadata={"help": "base seed: episode k of env i is seeded from (seed, i, k)"})
    keep_failures: bool = field(default=False, metadata={"help": "also keep episodes the expert failed"})
    max_attempts: int | None = field(default=None, metadata={"help": "give up after this many episodes"})
    video: bool = field(default=True, metadata={"help": "images as MP4 (LeRobot default) or PNG frames (lossless)"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "default: the task's own horizon"})
    vectorization: Literal["auto", "sync", "subprocess", "gpu"] = field(
        default="auto", metadata={"help": "auto, sync, subprocess or gpu (see make_env)"}
    )
    action_label: str = field(
        default="command",
        metadata={
            "help": "command (what the expert sent the controller) or joint_target (the arm's joint positions after "
            "each step + the gripper command: data for joint-position policies, RoboMimic tasks)"
        },
    )
    action_noise: float = field(
        default=0.0,
        metadata={
            "help": "DART noise injection: std of Gaussian noise added to the executed action on the dims the expert "
            "servos in closed loop (end-effector position); the dataset keeps the expert's clean action, so it "
            "shows corrections back from perturbed states (0: off)"
        },
    )

    def output_dir(self) -> Path:
        return Path(self.out) if self.out else Path("data/datasets") / self.env.replace("/", "_")


JOINT_TARGET_DIM = 8  # 7 joint positions (rad) + the gripper command


def _label_command(command: np.ndarray, after: dict[str, Any]) -> np.ndarray:
    return np.asarray(command)


def _label_joint_target(command: np.ndarray, after: dict[str, Any]) -> np.ndarray:
    """Where the arm went (the next joint positions) as an absolute target, and the gripper command."""
    q_next = np.asarray(after[keys.OBS_STATE], dtype=np.float32)[:7]
    return np.concatenate([q_next, np.asarray(command, dtype=np.float32)[-1:]])


def _noise_dims(config: CollectConfig, expert) -> list[int]:
    """The action dims that get DART noise (checked before any simulator starts); [] when off."""
    if config.action_noise < 0 or not np.isfinite(config.action_noise):
        raise ValueError(f"action_noise must be a finite number >= 0, got {config.action_noise}")
    if config.action_noise == 0:
        return []
    if config.action_label != "command":
        raise ValueError(
            "action_noise needs action_label command: a joint_target label records where the "
            "perturbed arm went, not the expert's correction"
        )
    from sim.experts import noise_capable_experts

    dims = list(getattr(expert, "servoed_action_dims", ()))
    if not dims:
        raise ValueError(
            f"the {config.env} expert does not declare servoed_action_dims, so it may not correct "
            f"noise on any action dim; action_noise works with: {', '.join(noise_capable_experts())}"
        )
    return dims


def _perturbation(config: CollectConfig, dims: list[int], spec):
    """``actions -> executed actions``: Gaussian noise on ``dims``, clipped to the action bounds; None when off."""
    if not dims:
        return None
    rng = np.random.default_rng(config.seed + 7919)  # its own stream, apart from the episode seeds
    low = np.asarray(spec.action_low, dtype=np.float32) if spec.action_low else -np.inf
    high = np.asarray(spec.action_high, dtype=np.float32) if spec.action_high else np.inf

    def perturb(actions: np.ndarray) -> np.ndarray:
        executed = np.array(actions, dtype=np.float32, copy=True)
        executed[:, dims] += rng.normal(0.0, config.action_noise, size=(len(executed), len(dims)))
        return np.clip(executed, low, high).astype(np.float32)

    return perturb


ACTION_LABELS: Registry = Registry("action label")
ACTION_LABELS.add("command", _label_command)
ACTION_LABELS.add("joint_target", _label_joint_target)


@dataclass
class CollectResult:
    out: Path
    written: int = 0
    attempted: int = 0
    successes: int = 0
    frames: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.attempted, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "episodes_written": self.written,
            "episodes_attempted": self.attempted,
            "expert_success_rate": round(self.success_rate, 4),
            "frames_written": self.frames,
            "seconds": round(self.seconds, 1),
            "interrupted": self.interrupted,
        }


class _TerminateAsInterrupt:
    """Turn SIGTERM into KeyboardInterrupt for the duration, so ``finally`` blocks run."""

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def collect(config: CollectConfig) -> CollectResult:
    """Record ``config.episodes`` demonstrations of one task, or of every task of a task group
    ("metaworld/MT10": that many per task, each with its instruction) into one dataset."""
    from sim.registry import group_members

    members = group_members(config.env)
    if members is None:
        return _collect_task(config)
    from sim.experts import make_expert

    for member in members:
        make_expert(member)  # a member without an expert fails before any simulator starts
    out = config.output_dir()
    total = CollectResult(out=out)
    for member in members:
        part = _collect_task(replace(config, env=member, out=out))
        for name in ("written", "attempted", "successes", "frames", "seconds"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.episode_lengths += part.episode_lengths
        if part.interrupted:
            total.interrupted = True
            break
    return total


def _collect_task(config: CollectConfig) -> CollectResult:
    from sim import make_env
    from sim.experts import make_expert
    from sim.registry import split_name

    out = config.output_dir()
    check_dataset_dir(out)  # refuse before starting any simulator
    suite, task = split_name(config.env)  # an unknown name fails here, listing what exists
    expert = make_expert(f"{suite.name}/{task}")  # so does a task without a scripted expert
    label_action = ACTION_LABELS.get(config.action_label)
    noise_dims = _noise_dims(config, expert)
    if config.action_label == "joint_target" and suite.name != "robomimic":
        raise ValueError(
            f"action_label joint_target needs a RoboMimic task (its state starts with the joint "
            f"positions), got {config.env}"
        )
    result = CollectResult(out=out)
    started = time.perf_counter()
    max_attempts = config.max_attempts or max(4 * config.episodes, config.episodes + 20)
    with _TerminateAsInterrupt():
        env = make_env(
            config.env,
            num_envs=config.num_envs,
            obs_mode=config.obs_mode,
            image_size=config.image_size,
            cameras=config.cameras,
            seed=config.seed,
            max_episode_steps=config.max_episode_steps,
            vectorization=config.vectorization,
            render_quality=config.render_quality,
        )
        writer = None
        try:
            spec = env.spec
            action_dim = spec.action_dim if config.action_label == "command" else JOINT_TARGET_DIM
            features = features_from_spec(
                spec.state_dim, action_dim, spec.env_state_dim, spec.cameras, spec.image_size, config.video
            )
            perturb = _perturbation(config, noise_dims, spec)
            recording = {
                "env": config.env,
                "render_quality": spec.render_quality if spec.cameras else None,
                "source": "scripted expert",
                "action_label": config.action_label,
                "action_noise": config.action_noise,
            }
            writer = EpisodeWriter(
                out,
                fps=spec.fps,
                features=features,
                robot_type=spec.robot,
                use_videos=config.video,
                recording=recording,
            )
            buffers: list[list[dict]] = [[] for _ in range(env.num_envs)]
            obs = env.reset()
            bar = tqdm(total=config.episodes, desc=f"collect {config.env}", unit="ep")
            while result.written < config.episodes and result.attempted < max_attempts:
                actions = env.expert_actions()
                next_obs, reward, terminated, truncated, info = env.step(
                    actions if perturb is None else perturb(actions)
                )
                for i in range(env.num_envs):
                    done = bool(terminated[i] or truncated[i])
                    after = info["final_observation"][i] if done else {k: v[i] for k, v in next_obs.items()}
                    action = label_action(actions[i], after)
                    buffers[i].append(
                        make_frame(obs, i, action, float(reward[i]), bool(info["success"][i]), done, features)
                    )
                    if not done:
                        continue
                    episode, frames, buffers[i] = info["episode"][i], buffers[i], []
                    result.attempted += 1
                    result.successes += int(episode["success"])
                    keep = episode["success"] or config.keep_failures
                    if keep and result.written < config.episodes:
                        writer.write_episode(
                            frames, {"seed": int(episode["seed"]), "success": bool(episode["success"])}
                        )
                        result.written += 1
                        result.frames += len(frames)
                        result.episode_lengths.append(len(frames))
                        bar.update(1)
                    bar.set_postfix(success=f"{result.successes}/{result.attempted}")
                obs = next_obs
            bar.close()
            if result.written < config.episodes:
                log.warning(
                    "stopped after %d attempts with %d/%d episodes (expert success %.0f%%)",
                    result.attempted,
                    result.written,
                    config.episodes,
                    100 * result.success_rate,
                )
        except KeyboardInterrupt:
            result.interrupted = True
            log.warning("interrupted: keeping the %d complete episodes written so far", result.written)
        finally:
            if writer is not None:
                writer.close()
            env.close()
    result.seconds = time.perf_counter() - started
    return result
