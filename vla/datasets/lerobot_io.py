"""LeRobot v3 datasets through the real ``lerobot`` package: create/append, episodes, info.

Frames use the canonical keys of ``vla.keys``; one episode is buffered by the caller and
written whole with ``EpisodeWriter.write_episode``, so a dataset on disk only ever holds
complete episodes. ``close()`` (also run on Ctrl-C/SIGTERM by the callers' ``finally``)
finalizes the parquet files.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla import keys

log = logging.getLogger(__name__)

CODEBASE_VERSION_PREFIX = "v3"


class NotADatasetError(ValueError):
    pass


RECORDING_FILE = "meta/vla_recording.json"  # how the frames were made (env, camera look), beside LeRobot's meta
EPISODE_LOG = "meta/vla_episodes.jsonl"  # one line per saved episode: its simulator seed, success, ...


def recording_info(root: str | Path) -> dict[str, Any]:
    """What ``EpisodeWriter(recording=...)`` stored with a dataset; {} for other datasets."""
    path = Path(root) / RECORDING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def append_episode_labels(root: str | Path, labels: dict[str, Any]) -> None:
    """Add one episode's labels (``episode_index`` first) to ``meta/vla_episodes.jsonl``."""
    import os

    with open(Path(root) / EPISODE_LOG, "a") as f:
        f.write(json.dumps(labels) + "\n")
        f.flush()
        os.fsync(f.fileno())


def episode_labels(root: str | Path) -> list[dict[str, Any]]:
    """Per-episode labels (simulator seed, success, interventions, timing); [] for other datasets."""
    path = Path(root) / EPISODE_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def repo_id_for(root: Path) -> str:
    return f"local/{Path(root).resolve().name}"


def is_lerobot_dataset(root: Path) -> bool:
    info = Path(root) / "meta" / "info.json"
    if not info.is_file():
        return False
    try:
        return str(json.loads(info.read_text()).get("codebase_version", "")).startswith(CODEBASE_VERSION_PREFIX)
    except (json.JSONDecodeError, OSError):
        return False


def check_dataset_dir(root: Path) -> None:
    """Refuse a directory that exists, is not empty and is not a LeRobot v3 dataset."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADatasetError(f"{root} exists and is not a directory; refusing to touch it")
    if root.is_dir() and any(root.iterdir()) and not is_lerobot_dataset(root):
        raise NotADatasetError(
            f"{root} exists, is not empty and is not a LeRobot v3 dataset (no meta/info.json with "
            "codebase_version v3.x). Refusing to write into it; choose another --out."
        )


def features_from_spec(
    state_dim: int,
    action_dim: int,
    env_state_dim: int = 0,
    cameras: Sequence[str] = (),
    image_size: tuple[int, int] = (84, 84),
    use_videos: bool = True,
    state_names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """LeRobot feature schema for our canonical keys."""
    features: dict[str, dict[str, Any]] = {
        keys.OBS_STATE: {
            "dtype": "float32",
            "shape": (state_dim,),
            "names": list(state_names) if state_names else None,
        },
        keys.ACTION: {"dtype": "float32", "shape": (action_dim,), "names": None},
        keys.REWARD: {"dtype": "float32", "shape": (1,), "names": None},
        keys.SUCCESS: {"dtype": "bool", "shape": (1,), "names": None},
        keys.DONE: {"dtype": "bool", "shape": (1,), "names": None},
    }
    if env_state_dim:
        features[keys.OBS_ENV_STATE] = {"dtype": "float32", "shape": (env_state_dim,), "names": None}
    height, width = image_size
    for camera in cameras:
        features[keys.image_key(camera)] = {
            "dtype": "video" if use_videos else "image",
            "shape": (height, width, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def _user_features(features: dict[str, dict]) -> dict[str, tuple]:
    """Feature name -> (dtype class, shape), without LeRobot's bookkeeping columns."""
    bookkeeping = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    visual = {"image", "video"}
    return {
        k: ("visual" if v["dtype"] in visual else v["dtype"], tuple(v["shape"]))
        for k, v in features.items()
        if k not in bookkeeping
    }


def silence_libav_info() -> None:
    """Keep FFmpeg's info lines ("[mp4 @ ...] Starting second pass ...") out of a long job's
    progress bar. LeRobot's video encoder hands logging back to libav's default stderr callback
    after each episode, at libav's default level (info), so PyAV's Python-side level does not
    hold; libav's own level (``av_log_set_level``) does, and errors still print."""
    import ctypes

    import av

    libs = sorted((Path(av.__file__).resolve().parents[1] / "av.libs").glob("libavutil*.so*"))
    if not libs:  # a PyAV built against system FFmpeg: find the libavutil this process loaded
        with open("/proc/self/maps") as maps:
            libs = sorted({Path(line.split()[-1]) for line in maps if "libavutil" in line})
    if libs:
        ctypes.CDLL(str(libs[0])).av_log_set_level(16)  # AV_LOG_ERROR


def check_appendable(
    root: Path, features: dict[str, dict[str, Any]], fps: int, recording: dict[str, Any] | None
) -> None:
    """Refuse appending frames to a dataset with other features, another fps or images rendered
    with another look (read from its metadata files)."""
    info = json.loads((Path(root) / "meta" / "info.json").read_text())
    existing, wanted = _user_features(info["features"]), _user_features(features)
    if existing != wanted or info["fps"] != fps:
        raise ValueError(
            f"cannot append to {root}: its features/fps differ from this run's.\n"
            f"  dataset: fps={info['fps']} {existing}\n  this run: fps={fps} {wanted}"
        )
    stored = recording_info(root).get("render_quality")
    has_cameras = any(v["dtype"] in ("video", "image") for v in info["features"].values())
    if recording is not None and has_cameras and stored != recording.get("render_quality"):
        raise ValueError(
            f"cannot append to {root}: its images were rendered with render_quality={stored!r}, "
            f"this run's with {recording.get('render_quality')!r} (pass --render-quality {stored} "
            "or write to a new dataset)"
        )


class EpisodeWriter:
    """Create a LeRobot v3 dataset, or append to an existing one with the same features."""

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        use_videos: bool = True,
        recording: dict[str, Any] | None = None,
    ):
        """``recording``: how the frames are made (``render_quality``, env); stored in
        ``meta/vla_recording.json``. Appending frames rendered another way is refused."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if use_videos:
            silence_libav_info()
        self.root = Path(root)
        check_dataset_dir(self.root)
        repo_id = repo_id_for(self.root)
        if is_lerobot_dataset(self.root):
            self.dataset = LeRobotDataset.resume(repo_id, root=self.root)
            try:
                check_appendable(self.root, features, fps, recording)
            except ValueError:
                self.dataset.finalize()
                raise
            log.info("appending to %s (%d episodes already)", self.root, self.dataset.meta.total_episodes)
        else:
            if self.root.is_dir():  # empty directory: LeRobot wants to create it itself
                shutil.rmtree(self.root)
            self.dataset = LeRobotDataset.create(
                repo_id, fps=fps, features=features, root=self.root, robot_type=robot_type, use_videos=use_videos
            )
            if recording is not None:
                (self.root / RECORDING_FILE).write_text(json.dumps(recording, indent=2))
        self.features = self.dataset.meta.features
        self._closed = False

    @property
    def num_episodes(self) -> int:
        return self.dataset.meta.total_episodes

    def write_episode(self, frames: Sequence[dict[str, Any]], labels: dict[str, Any] | None = None) -> None:
        """Add every frame of one episode and save it (videos encoded now); ``labels`` (its
        simulator seed, success) go to ``meta/vla_episodes.jsonl``."""
        if not frames:
            raise ValueError("an episode needs at least one frame")
        index = self.num_episodes
        for frame in frames:
            self.dataset.add_frame(frame)
        self.dataset.save_episode()
        if labels is not None:
            append_episode_labels(self.root, {"episode_index": index, **labels})

    def close(self) -> None:
        if not self._closed:
            self.dataset.finalize()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_frame(
    obs: dict[str, Any],
    index: int,
    action: np.ndarray,
    reward: float,
    success: bool,
    done: bool,
    features: dict[str, dict],
) -> dict[str, Any]:
    """One LeRobot frame from row ``index`` of a batched observation."""
    frame: dict[str, Any] = {"task": obs[keys.TASK][index]}
    for key in features:
        if key in obs and key != keys.TASK:
            frame[key] = obs[key][index]
    frame[keys.ACTION] = np.asarray(action, dtype=np.float32)
    frame[keys.REWARD] = np.array([reward], dtype=np.float32)
    frame[keys.SUCCESS] = np.array([success], dtype=bool)
    frame[keys.DONE] = np.array([done], dtype=bool)
    return frame


def load_dataset(root: str | Path, **kwargs):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    if not is_lerobot_dataset(root):
        raise NotADatasetError(f"{root} is not a LeRobot v3 dataset (no meta/info.json with codebase_version v3.x)")
    return LeRobotDataset(repo_id_for(root), root=root, **kwargs)


def dataset_info(root: str | Path) -> dict[str, Any]:
    """Summary of a dataset from its metadata (no frames decoded)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    root = Path(root)
    if not is_lerobot_dataset(root):
        raise NotADatasetError(f"{root} is not a LeRobot v3 dataset (no meta/info.json with codebase_version v3.x)")
    meta = LeRobotDatasetMetadata(repo_id_for(root), root=root)
    tasks = list(meta.tasks.index) if meta.tasks is not None else []
    return {
        "root": str(root),
        "codebase_version": meta.info.get("codebase_version"),
        "robot_type": meta.robot_type,
        "fps": meta.fps,
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "tasks": tasks,
        "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in meta.features.items()},
    }


def download_dataset(repo_id: str, out: str | Path, revision: str | None = None) -> dict[str, Any]:
    """Fetch a public LeRobot dataset from the Hugging Face Hub into ``out`` (needs network).

    Datasets still in LeRobot's v2.1 layout are refused with the converter to run.
    """
    from huggingface_hub import constants, snapshot_download

    out = Path(out)
    check_dataset_dir(out)
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError(
            f"cannot download {repo_id}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1, the default "
            "of this stack). With network access, run again with HF_HUB_OFFLINE=0."
        )
    snapshot_download(repo_id, repo_type="dataset", local_dir=out, revision=revision)
    if not is_lerobot_dataset(out):
        raise NotADatasetError(
            f"{repo_id} downloaded to {out} but is not in LeRobot's v3 layout; convert it with "
            f"`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id={repo_id} --root={out}`"
        )
    return dataset_info(out)


def decode_frames(dataset, start: int, stop: int, image_keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Frames ``start..stop-1`` of each camera as (n, H, W, 3) uint8, exactly as stored.

    LeRobot returns video frames as uint8 (``return_uint8``) but PNG frames as floats in [0, 1].
    """
    frames: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}
    for i in range(start, stop):
        item = dataset[i]
        for key in image_keys:
            image = item[key].numpy()
            if np.issubdtype(image.dtype, np.floating):
                image = np.clip(np.rint(image * 255.0), 0, 255)
            frames[key].append(image.astype(np.uint8).transpose(1, 2, 0))
    return {k: np.stack(v) for k, v in frames.items()}
