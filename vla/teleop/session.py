"""`vla record`: a person drives a simulated arm and every episode lands in a LeRobot dataset.

One loop at a fixed control rate: read the device (and the terminal keys for episode control),
handle episode events, pick who acts (the person, or a policy the person can take over from),
step the simulator, stream the frame into an ``EpisodeRecorder`` (crash-safe, one commit per
episode), update the live view. Each frame records whether a person was in control
(``intervention``) and its true capture time (``capture_time_s``); each episode its success
(the simulator's signal), takeovers and late control ticks (``meta/vla_episodes.jsonl``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sim.rendering import DEFAULT_RENDER_QUALITY
from vla.datasets.lerobot_io import features_from_spec, make_frame
from vla.datasets.recorder import EpisodeRecorder, VideoSettings
from vla.teleop.view import make_view

log = logging.getLogger(__name__)

INTERVENTION = "intervention"  # bool (1,): a person's device drove this frame
CAPTURE_TIME = "capture_time_s"  # float32 (1,): seconds since the episode started, measured


@dataclass
class RecordConfig:
    env: str = field(default="robomimic/Lift", metadata={"help": "<suite>/<task> to teleoperate (vla envs)"})
    device: str = field(default="keyboard", metadata={"help": "keyboard | gamepad | spacemouse | scripted"})
    device_path: str | None = field(default=None, metadata={"help": "device file (default: the first found)"})
    device_script: Path | None = field(default=None, metadata={"help": "JSON script for --device scripted"})
    out: Path | None = field(
        default=None, metadata={"help": "dataset (appended to); default data/datasets/teleop_<suite>_<task>"}
    )
    episodes: int = field(default=10, metadata={"help": "stop after saving this many episodes"})
    policy: Path | None = field(
        default=None, metadata={"help": "a policy checkpoint that acts until the person takes over (interventions)"}
    )
    obs_mode: Literal["rgb", "state"] = field(default="rgb", metadata={"help": "rgb (cameras + state) or state"})
    image_size: int = field(default=84, metadata={"help": "camera images are image_size x image_size"})
    cameras: tuple[str, ...] | None = field(default=None, metadata={"help": "camera roles; default: all of the task's"})
    render_quality: str = field(default=DEFAULT_RENDER_QUALITY, metadata={"help": "camera look (docs/rendering.md)"})
    rate_hz: float | None = field(default=None, metadata={"help": "control rate; default the task's control rate"})
    speed: float = field(default=1.0, metadata={"help": "scale of the device's motion"})
    keep_failures: bool = field(default=False, metadata={"help": "also save episodes that did not succeed"})
    autostart: bool = field(default=False, metadata={"help": "record from the first tick and after each save"})
    view: Literal["auto", "window", "rerun", "none"] = field(
        default="auto", metadata={"help": "live view: an OpenCV window (needs a display), a rerun recording, or none"}
    )
    max_episode_steps: int | None = field(default=None, metadata={"help": "default: the task's own horizon"})
    seed: int = field(default=0, metadata={"help": "seed of the first episode's scene"})
    video_codec: str = field(default="h264", metadata={"help": "camera video codec (h264 keeps up in real time)"})

    def output_dir(self) -> Path:
        return Path(self.out) if self.out else Path("data/datasets") / ("teleop_" + self.env.replace("/", "_"))


class FixedRateClock:
    """Ticks at ``rate_hz``. A tick that overruns is counted as late and the schedule restarts from
    now (no burst of catch-up ticks); frames carry their true capture time either way."""

    def __init__(self, rate_hz: float):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self.late = 0
        self._next = time.monotonic() + self.period

    def wait(self) -> None:
        now = time.monotonic()
        if now > self._next + 0.5 * self.period:
            self.late += 1
            self._next = now + self.period
            return
        time.sleep(max(0.0, self._next - now))
        self._next += self.period


@dataclass
class Episode:
    """What the operator is recording now."""

    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    human_frames: int = 0
    takeovers: int = 0
    late_ticks_at_start: int = 0
    success: bool = False
    seed: int | None = None  # the simulator seed of the scene: `vla replay` starts from it


@dataclass
class RecordResult:
    out: str
    saved: int = 0
    successes_saved: int = 0
    discarded: int = 0
    undone: int = 0
    frames: int = 0
    late_ticks: int = 0
    save_seconds: list[float] = field(default_factory=list)
    recovered: str | None = None
    stopped_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open_device(config: RecordConfig, expert_fn):
    from hardware.teleop import make_device
    from hardware.teleop.scripted import load_script

    kwargs: dict[str, Any] = {}
    if config.device == "scripted":
        kwargs = {"script": load_script(config.device_script) if config.device_script else None, "expert_fn": expert_fn}
    elif config.device_path:
        kwargs = {"path": config.device_path}
    device = make_device(config.device, **kwargs)
    device.connect()
    return device


def _terminal_keys(config: RecordConfig):
    """Episode controls from the terminal when the device is not the keyboard itself."""
    if config.device in ("keyboard", "scripted") or not sys.stdin.isatty():
        return None
    from hardware.teleop.keyboard import KeyboardDevice

    keyboard = KeyboardDevice()
    keyboard.connect()
    return keyboard


def record(config: RecordConfig) -> RecordResult:
    from hardware.teleop import base
    from sim import make_env
    from sim.teleop import teleop_layout
    from vla.evaluation.evaluate import observation_kwargs
    from vla.threads import set_thread_budget

    set_thread_budget("recorder")
    policy = None
    env_kwargs: dict[str, Any] = {
        "obs_mode": config.obs_mode,
        "image_size": config.image_size,
        "cameras": config.cameras,
        "render_quality": config.render_quality,
    }
    if config.policy is not None:
        from vla.policies.checkpoint import load_policy

        policy = load_policy(config.policy)
        env_kwargs = observation_kwargs(policy.config, config.render_quality)
    out = config.output_dir()
    env = make_env(
        config.env,
        num_envs=1,
        seed=config.seed,
        max_episode_steps=config.max_episode_steps,
        vectorization="sync",
        **env_kwargs,
    )
    spec = env.spec
    layout = teleop_layout(spec.suite, spec.action_dim)
    result = RecordResult(out=str(out))
    device = keyboard = view = recorder = None
    live = {"recording": False}
    try:

        def expert_fn():
            """A virtual operator: the scripted expert's action as device input. Asked only while
            recording: experts keep per-episode state that idle queries would advance."""
            if not live["recording"]:
                return np.zeros(6, dtype=np.float32), False
            return layout.twist(env.expert_actions()[0], config.speed)

        device = _open_device(config, expert_fn)
        keyboard = _terminal_keys(config)
        features = features_from_spec(
            spec.state_dim, spec.action_dim, spec.env_state_dim, spec.cameras, spec.image_size
        )
        features[INTERVENTION] = {"dtype": "bool", "shape": (1,), "names": None}
        features[CAPTURE_TIME] = {"dtype": "float32", "shape": (1,), "names": None}
        recording_meta = {
            "env": config.env,
            "render_quality": spec.render_quality if spec.cameras else None,
            "source": "teleop",
            "device": config.device,
            "policy": str(config.policy) if config.policy else None,
        }
        recorder = EpisodeRecorder(
            out,
            fps=int(round(config.rate_hz or spec.fps)),
            features=features,
            robot_type=spec.robot,
            recording=recording_meta,
            video=VideoSettings(codec=config.video_codec),
        )
        result.recovered = recorder.recovered
        view = make_view(config.view, out)
        print(f"recording {config.env} into {out} ({recorder.num_episodes} episodes already)\n{device.controls()}")
        _loop(config, env, device, keyboard, policy, layout, recorder, view, result, base, live)
    finally:
        for closer in (recorder, view, keyboard, device):
            if closer is not None:
                try:
                    closer.close() if hasattr(closer, "close") else closer.disconnect()
                except Exception:  # noqa: BLE001 - close everything, report the first error only
                    log.exception("while closing %s", type(closer).__name__)
        env.close()
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "vla_last_session.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _loop(config, env, device, keyboard, policy, layout, recorder, view, result, base, live) -> None:
    spec = env.spec
    clock = FixedRateClock(config.rate_hz or spec.fps)
    obs = env.reset()
    episode: Episode | None = Episode(late_ticks_at_start=clock.late) if config.autostart else None
    human = policy is None

    def finish(save: bool) -> None:
        nonlocal episode
        if episode is None:
            return
        if save and episode.frames:
            labels = {
                "seed": episode.seed,
                "success": episode.success,
                "seconds": round(time.monotonic() - episode.started, 3),
                "human_frames": episode.human_frames,
                "takeovers": episode.takeovers,
                "late_ticks": clock.late - episode.late_ticks_at_start,
                "device": config.device,
            }
            saved = recorder.save_episode(labels)
            result.saved += 1
            result.successes_saved += int(episode.success)
            result.frames += saved.frames
            result.save_seconds.append(round(saved.save_seconds, 3))
            print(
                f"saved episode {saved.index} ({saved.frames} frames, success={episode.success}) in {saved.save_seconds:.2f} s"
            )
        else:
            dropped = recorder.discard_episode()
            result.discarded += 1
            print(f"discarded the episode ({dropped} frames)")
        episode = None

    while result.saved < config.episodes:
        live["recording"] = episode is not None
        try:
            command = device.read()
        except base.DeviceDisconnectedError as e:
            log.error("%s: the episode in progress is discarded, saved episodes are kept", e)
            finish(save=False)
            result.stopped_by = f"device disconnected: {e}"
            return
        events = list(command.events) + (list(keyboard.read().events) if keyboard is not None else [])
        for event in events:
            if event == base.NEXT:
                event = base.START if episode is None else base.SAVE
            if event == base.QUIT:
                finish(save=False)
                result.stopped_by = "quit"
                return
            if event == base.START and episode is None:
                episode = Episode(late_ticks_at_start=clock.late)
            elif event == base.SAVE and episode is not None:
                finish(save=True)
                obs = env.reset()
                if config.autostart:
                    episode = Episode(late_ticks_at_start=clock.late)
            elif event in (base.DISCARD, base.RERECORD) and episode is not None:
                finish(save=False)
                obs = env.reset()
                if event == base.RERECORD:
                    episode = Episode(late_ticks_at_start=clock.late)
            elif event == base.UNDO:
                if episode is not None:
                    print("undo applies between episodes: save or discard this one first")
                else:
                    print(f"removed episode {recorder.undo_last_episode()}")
                    result.undone += 1
            elif event == base.TAKEOVER and policy is not None and not human:
                human = True
                if episode is not None:
                    episode.takeovers += 1
            elif event == base.RELEASE and policy is not None and human:
                human = False
                policy.reset()  # re-plan from where the person left the arm
        if policy is not None and not human and command.engaged:
            human = True  # moving the device takes over
            if episode is not None:
                episode.takeovers += 1
        if episode is None:  # idle: the scene waits for the operator
            view.show(obs, recording=False, human=human, episodes=recorder.num_episodes)
            clock.wait()
            continue
        captured = time.monotonic() - episode.started
        if human:
            action = layout.action(command.twist, command.gripper_closed, config.speed)
        else:
            action = np.asarray(policy.select_action(obs)[0], dtype=np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action[None])
        done = bool(terminated[0] or truncated[0])
        success = bool(info["success"][0])
        frame = make_frame(obs, 0, action, float(reward[0]), success, done, recorder.features)
        frame[INTERVENTION] = np.array([human], dtype=bool)
        frame[CAPTURE_TIME] = np.array([captured], dtype=np.float32)
        recorder.add_frame(frame)
        if episode.seed is None:
            episode.seed = int(info["episode_seed"][0])
        episode.frames += 1
        episode.human_frames += int(human)
        episode.success = episode.success or success
        obs = next_obs
        view.show(obs, recording=True, human=human, episodes=recorder.num_episodes)
        if done:  # success (the task ends there) or the time limit
            finish(save=episode.success or config.keep_failures)
            if policy is not None:
                policy.reset()
                human = False
            if config.autostart:
                episode = Episode(late_ticks_at_start=clock.late)
        clock.wait()
        result.late_ticks = clock.late
    result.stopped_by = f"{config.episodes} episodes saved"
