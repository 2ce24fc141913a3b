"""`vla bench record`: can a 2-core machine record two 640x480 cameras plus joint states at 30 Hz
without dropping frames, and how long does saving an episode keep the operator waiting?

Synthetic cameras (textured frames that move, so the encoder works as on real images) and
joint states are recorded at a fixed rate for ``seconds`` per episode, through

* ``vla`` : ``EpisodeRecorder`` (H.264 encoded while recording, one durable commit per episode);
* ``lerobot-default`` : LeRobot's own writer as ``lerobot-record`` configures it (PNG frames
  written by 4 threads while recording, AV1 encoded when the episode is saved).

Reported per mode: frames recorded vs expected, late control ticks, tick jitter, camera frames
the encoder dropped, seconds from the end of the episode until control is back (save), MB
written and MB/s, and a read-back check that every episode loads in LeRobot with as many
video frames as data rows.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla.datasets.lerobot_io import features_from_spec
from vla.threads import set_thread_budget


@dataclass
class BenchRecordConfig:
    modes: tuple[str, ...] = field(default=("vla", "lerobot-default"), metadata={"help": "vla, lerobot-default"})
    cameras: int = field(default=2, metadata={"help": "synthetic cameras"})
    width: int = field(default=640, metadata={"help": "camera width (px)"})
    height: int = field(default=480, metadata={"help": "camera height (px)"})
    rate_hz: float = field(default=30.0, metadata={"help": "recording rate"})
    seconds: float = field(default=60.0, metadata={"help": "length of each episode"})
    episodes: int = field(default=2, metadata={"help": "episodes per mode"})
    joints: int = field(default=9, metadata={"help": "joint-state size (7 arm + 2 fingers)"})
    work_dir: Path | None = field(default=None, metadata={"help": "where datasets are written (default: a temp dir)"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


class SyntheticCamera:
    """Frames with texture and motion (a scrolling noise pattern over a gradient), as cheap to
    produce as a driver's copy: the encoder sees realistic work, the loop does not pay for it."""

    def __init__(self, height: int, width: int, seed: int):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0 : 2 * width]
        base = np.stack([(xx * 255 // (2 * width)), (yy * 255 // height), ((xx + yy) % 256)], -1)
        noise = rng.integers(0, 48, size=base.shape)
        self.pattern = (base + noise).clip(0, 255).astype(np.uint8)
        self.width = width
        self.tick = 0

    def read(self) -> np.ndarray:
        offset = (self.tick * 4) % self.width
        self.tick += 1
        return np.ascontiguousarray(self.pattern[:, offset : offset + self.width])


def _frame(cams: list[SyntheticCamera], joints: int, t: float) -> dict:
    q = np.sin(np.arange(joints) + t).astype(np.float32)
    frame = {
        "task": "benchmark",
        "observation.state": q,
        "action": q[:7].copy(),
        "next.reward": np.zeros(1, np.float32),
        "next.success": np.zeros(1, bool),
        "next.done": np.zeros(1, bool),
    }
    for i, cam in enumerate(cams):
        frame[f"observation.images.cam{i}"] = cam.read()
    return frame


class _LeRobotDefault:
    """LeRobot's writer as lerobot-record sets it up: async PNG writer threads, AV1 at save."""

    def __init__(self, root: Path, fps: int, features: dict):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self.dataset = LeRobotDataset.create(
            "bench/record", fps=fps, features=features, root=root, use_videos=True, image_writer_threads=4
        )

    def add_frame(self, frame: dict) -> None:
        self.dataset.add_frame(frame)

    def save_episode(self) -> int:
        self.dataset.save_episode()
        return 0

    def close(self) -> None:
        self.dataset.finalize()


class _Vla:
    def __init__(self, root: Path, fps: int, features: dict):
        from vla.datasets.recorder import EpisodeRecorder

        self.recorder = EpisodeRecorder(root, fps=fps, features=features)

    def add_frame(self, frame: dict) -> None:
        self.recorder.add_frame(frame)

    def save_episode(self) -> int:
        dropped = self.recorder._dropped_frames()
        self.recorder.save_episode()
        return dropped

    def close(self) -> None:
        self.recorder.close()


WRITERS = {"vla": _Vla, "lerobot-default": _LeRobotDefault}


def _dir_megabytes(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def _check_readback(root: Path, camera_keys: list[str]) -> dict:
    """Every episode loads, and its videos hold as many frames as its data rows."""
    import av

    from vla.datasets.lerobot_io import load_dataset

    dataset = load_dataset(root)
    rows = int(dataset.meta.total_frames)
    video_frames = 0
    for path in sorted((root / "videos" / camera_keys[0]).rglob("*.mp4")):
        with av.open(str(path)) as container:
            video_frames += sum(1 for _ in container.decode(video=0))
    last = dataset[len(dataset) - 1]  # decodes the last frame of the last episode
    return {
        "episodes_loaded": int(dataset.num_episodes),
        "rows": rows,
        "video_frames_first_camera": video_frames,
        "last_frame_decoded": tuple(last[camera_keys[0]].shape) == (3, *_shape_of(dataset, camera_keys[0])),
    }


def _shape_of(dataset, key: str) -> tuple[int, int]:
    shape = dataset.meta.features[key]["shape"]
    return int(shape[0]), int(shape[1])


def run_mode(config: BenchRecordConfig, mode: str, root: Path) -> dict:
    fps = int(round(config.rate_hz))
    cameras = tuple(f"cam{i}" for i in range(config.cameras))
    features = features_from_spec(config.joints, 7, 0, cameras, (config.height, config.width), True)
    cams = [SyntheticCamera(config.height, config.width, seed=i) for i in range(config.cameras)]
    writer = WRITERS[mode](root, fps, features)
    period = 1.0 / config.rate_hz
    expected = int(round(config.seconds * config.rate_hz))
    episodes = []
    try:
        for _ in range(config.episodes):
            intervals, late = [], 0
            start = time.monotonic()
            next_tick = start
            previous = None
            for _ in range(expected):
                now = time.monotonic()
                if previous is not None:
                    intervals.append(now - previous)
                previous = now
                writer.add_frame(_frame(cams, config.joints, now - start))
                next_tick += period
                sleep = next_tick - time.monotonic()
                if sleep > 0:
                    time.sleep(sleep)
                elif -sleep > 0.5 * period:
                    late += 1
            recorded_seconds = time.monotonic() - start
            ended = time.monotonic()
            dropped = writer.save_episode()
            save_seconds = time.monotonic() - ended
            jitter = np.abs(np.array(intervals) - period) * 1e3
            episodes.append(
                {
                    "frames_expected": expected,
                    "frames_recorded": expected - dropped,
                    "encoder_dropped": dropped,
                    "late_ticks": late,
                    "achieved_hz": round(expected / recorded_seconds, 2),
                    "jitter_ms_p50": round(float(np.percentile(jitter, 50)), 2),
                    "jitter_ms_p99": round(float(np.percentile(jitter, 99)), 2),
                    "jitter_ms_max": round(float(jitter.max()), 2),
                    "save_seconds": round(save_seconds, 2),
                }
            )
    finally:
        writer.close()
    megabytes = _dir_megabytes(root)
    wall = config.episodes * config.seconds
    pixels_mb_s = config.cameras * config.width * config.height * 3 * config.rate_hz / 1e6
    return {
        "mode": mode,
        "cameras": f"{config.cameras} x {config.width}x{config.height} @ {config.rate_hz:g} Hz",
        "seconds_per_episode": config.seconds,
        "episodes": episodes,
        "save_seconds_max": max(e["save_seconds"] for e in episodes),
        "frames_lost": sum(e["frames_expected"] - e["frames_recorded"] for e in episodes),
        "late_ticks": sum(e["late_ticks"] for e in episodes),
        "camera_input_mb_s": round(pixels_mb_s, 1),
        "written_mb": round(megabytes, 1),
        "write_mb_s": round(megabytes / wall, 2),
        "readback": _check_readback(root, [f"observation.images.{c}" for c in cameras]),
    }


def run_bench_record(config: BenchRecordConfig) -> list[dict]:
    unknown = [m for m in config.modes if m not in WRITERS]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; available: {', '.join(WRITERS)}")
    set_thread_budget("recorder")
    work = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="vla-bench-record-"))
    rows = []
    try:
        for mode in config.modes:
            root = work / mode
            shutil.rmtree(root, ignore_errors=True)
            row = run_mode(config, mode, root)
            rows.append(row)
            e = row["episodes"]
            print(
                f"{mode:16s} frames {sum(x['frames_recorded'] for x in e)}/{sum(x['frames_expected'] for x in e)}  "
                f"late ticks {row['late_ticks']}  jitter p99 {statistics.mean(x['jitter_ms_p99'] for x in e):.1f} ms  "
                f"save {row['save_seconds_max']:.2f} s (max)  written {row['written_mb']} MB "
                f"({row['write_mb_s']} MB/s)  read back: {row['readback']}"
            )
    finally:
        if config.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows
