"""`vla dataset from-bag`: rosbag2 MCAP recordings (``vla_ros.recorder``) -> a LeRobot v3 dataset.

Each bag becomes one episode, resampled at a fixed rate on the messages' own header stamps
(the time a camera exposed a frame or the arm reported its joints, not when the recorder got
them). At each tick every stream contributes its latest message at or before the tick; a
stream whose latest message is older than ``max_age_s`` is counted as a dropped frame at that
tick (the last frame is held), and a camera frame used on two ticks in a row as a duplicate.
Ticks before every stream has spoken are skipped. The action of a tick is the commanded
joint position from the arm controller's trajectory at that time, or, when the bag holds no
commands, the next tick's joint positions. The per-episode report (messages, drops,
duplicates, stamp skew against the recorder's clock) goes to ``meta/vla_episodes.jsonl``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla import keys
from vla.datasets.recorder import EpisodeRecorder

log = logging.getLogger(__name__)

DEFAULT_CAMERAS = ("scene=/camera/camera/color/image_raw", "wrist=/wrist_camera/wrist_camera/color/image_raw")
CAPTURE_TIME = "capture_time_s"
STAMP_TOLERANCE_S = 1e-6  # stamps are integer nanoseconds, ticks floats: "at or before" within this


@dataclass
class FromBagConfig:
    bags: tuple[Path, ...] = field(default=(), metadata={"help": "rosbag2 directories, one episode each"})
    out: Path = field(default=Path("data/datasets/from_bags"), metadata={"help": "LeRobot dataset (appended to)"})
    fps: float = field(default=30.0, metadata={"help": "resampling rate of the dataset"})
    cameras: tuple[str, ...] = field(default=DEFAULT_CAMERAS, metadata={"help": "role=topic per camera"})
    joint_states: str = field(default="/joint_states", metadata={"help": "sensor_msgs/JointState topic"})
    joints: tuple[str, ...] | None = field(
        default=None, metadata={"help": "joint names in state order (default: the first message's order)"}
    )
    command: str = field(
        default="/fr3_arm_controller/joint_trajectory", metadata={"help": "trajectory_msgs/JointTrajectory topic"}
    )
    task: str | None = field(default=None, metadata={"help": "instruction (default: the bag's /task_instruction)"})
    instruction_topic: str = field(default="/task_instruction", metadata={"help": "std_msgs/String topic"})
    max_age_s: float | None = field(default=None, metadata={"help": "staler than this is a drop (default 1.5/fps)"})


@dataclass
class _Stream:
    stamps: np.ndarray  # seconds, sorted
    values: list[Any]


def _stamp(msg, fallback_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is not None and (header.stamp.sec or header.stamp.nanosec):
        return header.stamp.sec + header.stamp.nanosec * 1e-9
    return fallback_ns * 1e-9


def _image(msg) -> np.ndarray:
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"camera encoding {msg.encoding!r} is not supported (rgb8, bgr8, rgba8, bgra8)")
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    image = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)[..., :3]
    return np.ascontiguousarray(image[..., ::-1] if msg.encoding.startswith("bgr") else image)


def read_bag(path: Path, config: FromBagConfig) -> dict[str, Any]:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    cameras = dict(c.split("=", 1) for c in config.cameras)
    wanted = {**{topic: f"camera:{role}" for role, topic in cameras.items()}, config.joint_states: "joints"}
    wanted[config.command] = "command"
    wanted[config.instruction_topic] = "instruction"
    typestore = get_typestore(Stores.ROS2_JAZZY)
    raw: dict[str, tuple[list[float], list[Any]]] = {}
    skew: list[float] = []
    with Reader(path) as reader:
        present = {c.topic for c in reader.connections}
        missing = [t for t in [*cameras.values(), config.joint_states] if t not in present]
        if missing:
            raise ValueError(f"{path} has no {missing}; its topics: {sorted(present)}")
        connections = [c for c in reader.connections if c.topic in wanted]
        for connection, received_ns, data in reader.messages(connections=connections):
            msg = typestore.deserialize_cdr(data, connection.msgtype)
            kind = wanted[connection.topic]
            stamp = _stamp(msg, received_ns)
            if kind != "instruction":
                skew.append(received_ns * 1e-9 - stamp)
            stamps, values = raw.setdefault(kind, ([], []))
            if kind.startswith("camera:"):
                values.append(_image(msg))
            elif kind == "joints":
                values.append((list(msg.name), np.asarray(msg.position, dtype=np.float64)))
            elif kind == "command":
                values.append(msg)
            else:
                values.append(msg.data)
            stamps.append(stamp)
    streams = {}
    for kind, (stamps, values) in raw.items():
        order = np.argsort(stamps, kind="stable")
        streams[kind] = _Stream(np.asarray(stamps)[order], [values[i] for i in order])
    return {"streams": streams, "cameras": list(cameras), "skew": np.asarray(skew)}


def _joint_vector(names: list[str], positions: np.ndarray, order: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in order if n not in index]
    if missing:
        raise ValueError(f"joint states lack {missing} (they name {names})")
    return np.array([positions[index[n]] for n in order], dtype=np.float32)


def _commanded(trajectories: _Stream, t: float, order: list[str], fallback: np.ndarray) -> np.ndarray | None:
    """The commanded joint positions at time ``t``: the latest trajectory sent before ``t``, at
    its first point due at or after ``t`` (its last point once it has run out). Joints the
    trajectory does not command (the gripper's fingers) take ``fallback`` (the next measured)."""
    i = int(np.searchsorted(trajectories.stamps, t + STAMP_TOLERANCE_S, side="right")) - 1
    if i < 0:
        return None
    trajectory = trajectories.values[i]
    if not trajectory.points:
        return None
    start = trajectories.stamps[i]
    due = [start + p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in trajectory.points]
    k = next((j for j, d in enumerate(due) if d >= t - STAMP_TOLERANCE_S), len(due) - 1)
    commanded = dict(zip(trajectory.joint_names, trajectory.points[k].positions, strict=True))
    unknown = [n for n in commanded if n not in order]
    if unknown:
        raise ValueError(f"the arm controller commands joints {unknown} that the joint states do not report")
    return np.array([commanded.get(n, fallback[i]) for i, n in enumerate(order)], dtype=np.float32)


def episode_frames(bag: dict[str, Any], config: FromBagConfig) -> tuple[list[dict], dict[str, Any]]:
    streams: dict[str, _Stream] = bag["streams"]
    period = 1.0 / config.fps
    max_age = config.max_age_s if config.max_age_s is not None else 1.5 * period
    sensor_kinds = [f"camera:{c}" for c in bag["cameras"]] + ["joints"]
    start = max(streams[k].stamps[0] for k in sensor_kinds)
    stop = min(streams[k].stamps[-1] for k in sensor_kinds)
    ticks = start + period * np.arange(int(np.floor((stop - start) / period)) + 1)
    order = list(config.joints) if config.joints else streams["joints"].values[0][0]
    task = config.task or (streams["instruction"].values[-1] if "instruction" in streams else "")
    report: dict[str, Any] = {"ticks": len(ticks), "streams": {}}
    picks: dict[str, np.ndarray] = {}
    for kind in sensor_kinds:
        stream = streams[kind]
        index = np.searchsorted(stream.stamps, ticks + STAMP_TOLERANCE_S, side="right") - 1
        age = np.maximum(ticks - stream.stamps[index], 0.0)
        picks[kind] = index
        report["streams"][kind] = {
            "messages": len(stream.stamps),
            "dropped_ticks": int((age > max_age).sum()),
            "duplicated_ticks": int((np.diff(index) == 0).sum()) if kind != "joints" else 0,
            "max_age_ms": round(float(age.max()) * 1e3, 1),
        }
    skew = bag["skew"]
    report["stamp_minus_receive_ms"] = {
        "median": round(float(-np.median(skew)) * 1e3, 2) if len(skew) else None,
        "max_abs": round(float(np.abs(skew).max()) * 1e3, 2) if len(skew) else None,
    }
    states = np.stack([_joint_vector(*streams["joints"].values[i], order) for i in picks["joints"]])
    frames = []
    for n, t in enumerate(ticks):
        following = states[min(n + 1, len(ticks) - 1)]
        action = _commanded(streams["command"], t, order, following) if "command" in streams else None
        if action is None:
            action = following
        frame = {
            "task": task,
            keys.OBS_STATE: states[n],
            keys.ACTION: np.asarray(action, dtype=np.float32),
            keys.REWARD: np.zeros(1, np.float32),
            keys.SUCCESS: np.zeros(1, bool),
            keys.DONE: np.array([n == len(ticks) - 1]),
            CAPTURE_TIME: np.array([streams[sensor_kinds[0]].stamps[picks[sensor_kinds[0]][n]] - start], np.float32),
        }
        for camera in bag["cameras"]:
            kind = f"camera:{camera}"
            frame[keys.image_key(camera)] = streams[kind].values[picks[kind][n]]
        frames.append(frame)
    report["action_source"] = "commanded" if "command" in streams else "next joint state"
    report["joints"] = order
    return frames, report


def bags_to_dataset(config: FromBagConfig) -> list[dict[str, Any]]:
    """Convert each bag into one episode of ``config.out``; returns the per-episode reports."""
    from vla.datasets.lerobot_io import features_from_spec

    if not config.bags:
        raise ValueError("no bags given")
    reports: list[dict[str, Any]] = []
    recorder = None
    try:
        for path in config.bags:
            bag = read_bag(Path(path), config)
            frames, report = episode_frames(bag, config)
            if recorder is None:
                first = frames[0]
                images = {c: first[keys.image_key(c)].shape[:2] for c in bag["cameras"]}
                sizes = set(images.values())
                if len(sizes) != 1:
                    raise ValueError(f"cameras differ in size {images}; record them at one resolution")
                features = features_from_spec(
                    len(first[keys.OBS_STATE]), len(first[keys.ACTION]), 0, tuple(bag["cameras"]), sizes.pop()
                )
                features[keys.OBS_STATE]["names"] = report["joints"]
                features[CAPTURE_TIME] = {"dtype": "float32", "shape": (1,), "names": None}
                recorder = EpisodeRecorder(
                    config.out,
                    fps=int(round(config.fps)),
                    features=features,
                    robot_type="franka",
                    recording={"source": "rosbag2", "render_quality": None},
                )
            for frame in frames:
                recorder.add_frame(frame)
            saved = recorder.save_episode({"bag": str(path), **report})
            report["episode_index"] = saved.index
            reports.append(report)
    finally:
        if recorder is not None:
            recorder.close()
    return reports
