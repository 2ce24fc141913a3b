"""Lossless import/export between LeRobot v3 datasets and diffusion_policy's zarr ReplayBuffer.

ReplayBuffer layout: ``data/<key>`` holds every episode concatenated along time and
``meta/episode_ends`` the cumulative end index of each episode. We keep LeRobot's keys as
array names, images as uint8 ``(N, H, W, 3)``, and the task strings in
``data/task_index`` + ``meta`` attributes ``tasks``/``fps``/``robot_type``.

Images come back exactly: the import writes them as LeRobot ``image`` (PNG) features by
default, so zarr -> LeRobot -> zarr is bit-identical; a video dataset exports its decoded
frames, which then round-trip exactly too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vla import keys
from vla.datasets.lerobot_io import EpisodeWriter, check_dataset_dir, decode_frames, load_dataset

log = logging.getLogger(__name__)

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# diffusion_policy's own key names -> ours, used when importing their replay buffers
DIFFUSION_POLICY_KEYS = {
    "img": keys.image_key(keys.CAMERA_SCENE),
    "image": keys.image_key(keys.CAMERA_SCENE),
    "state": keys.OBS_STATE,
    "agent_pos": keys.OBS_STATE,
    "action": keys.ACTION,
}
DEFAULT_TASK = "unspecified task"


def _compressor():
    import zarr

    return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]


def export_zarr(dataset_root: str | Path, out: str | Path) -> dict[str, Any]:
    """Write a LeRobot dataset as a zarr ReplayBuffer directory."""
    import zarr

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite it")
    dataset = load_dataset(dataset_root, return_uint8=True)
    meta = dataset.meta
    table = dataset.hf_dataset.with_format("numpy")
    total = meta.total_frames
    visual = [k for k, f in meta.features.items() if f["dtype"] in ("image", "video")]
    columns = [k for k, f in meta.features.items() if k not in visual and k not in BOOKKEEPING]

    root = zarr.open_group(str(out), mode="w")
    data = root.create_group("data")
    for key in columns:
        values = np.stack(table[key]) if total else np.zeros((0, *meta.features[key]["shape"]))
        values = values.reshape(total, *meta.features[key]["shape"]).astype(meta.features[key]["dtype"])
        data.create_array(
            key, data=values, chunks=(min(max(total, 1), 4096), *values.shape[1:]), compressors=_compressor()
        )
    task_index = np.asarray(table["task_index"], dtype=np.int64).reshape(total)
    data.create_array("task_index", data=task_index, compressors=_compressor())
    for key in visual:
        height, width, channels = meta.features[key]["shape"]
        array = data.create_array(
            key,
            shape=(total, height, width, channels),
            dtype="uint8",
            chunks=(64, height, width, channels),
            compressors=_compressor(),
        )
        block = 256
        for start in tqdm(range(0, total, block), desc=f"export {key}", unit="blk", leave=False):
            stop = min(start + block, total)
            array[start:stop] = decode_frames(dataset, start, stop, [key])[key]
    episode_index = np.asarray(table["episode_index"], dtype=np.int64).reshape(total)
    lengths = np.bincount(episode_index, minlength=meta.total_episodes)
    meta_group = root.create_group("meta")
    meta_group.create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64), compressors=_compressor())
    tasks = [str(t) for t in meta.tasks.sort_values("task_index").index] if meta.tasks is not None else []
    meta_group.attrs.update({"fps": meta.fps, "tasks": tasks, "robot_type": meta.robot_type, "source": "lerobot-v3"})
    log.info("exported %d episodes / %d frames to %s", meta.total_episodes, total, out)
    return {"episodes": int(meta.total_episodes), "frames": int(total), "out": str(out)}


def _lerobot_dtype(array) -> str:
    return {"bool": "bool", "float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32"}.get(
        str(array.dtype), "float32"
    )


def import_zarr(
    zarr_path: str | Path,
    out: str | Path,
    fps: int | None = None,
    task: str | None = None,
    use_videos: bool = False,
    key_map: dict[str, str] | None = None,
    robot_type: str | None = None,
) -> dict[str, Any]:
    """Write a zarr ReplayBuffer as a LeRobot v3 dataset (images lossless by default)."""
    import zarr

    check_dataset_dir(out)
    root = zarr.open_group(str(zarr_path), mode="r")
    if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
        raise ValueError(f"{zarr_path} is not a ReplayBuffer (needs data/<key> and meta/episode_ends)")
    attrs = dict(root["meta"].attrs)
    fps = fps or attrs.get("fps")
    if not fps:
        raise ValueError(f"{zarr_path} does not record its fps; pass fps=")
    mapping = {**DIFFUSION_POLICY_KEYS, **(key_map or {})}
    episode_ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
    arrays = {name: root["data"][name] for name in root["data"].array_keys() if name != "task_index"}
    renamed = {
        (
            name
            if name.startswith(("observation.", "next.")) or name == keys.ACTION
            else mapping.get(name, f"observation.{name}")
        ): a
        for name, a in arrays.items()
    }
    if keys.ACTION not in renamed:
        raise ValueError(f"{zarr_path} has no action array (found: {', '.join(arrays)})")
    features: dict[str, dict[str, Any]] = {}
    for key, array in renamed.items():
        is_image = array.ndim == 4 and str(array.dtype) == "uint8" and array.shape[-1] in (1, 3)
        if is_image:
            features[key] = {
                "dtype": "video" if use_videos else "image",
                "shape": tuple(array.shape[1:]),
                "names": ["height", "width", "channels"],
            }
        else:
            shape = tuple(array.shape[1:]) or (1,)
            features[key] = {"dtype": _lerobot_dtype(array), "shape": shape, "names": None}
    tasks = attrs.get("tasks") or [task or DEFAULT_TASK]
    task_index = (
        root["data"]["task_index"][:]
        if "task_index" in root["data"]
        else np.zeros(int(episode_ends[-1]) if len(episode_ends) else 0, dtype=np.int64)
    )
    if task is not None:
        tasks, task_index = [task], np.zeros_like(task_index)
    starts = np.concatenate([[0], episode_ends[:-1]])
    with EpisodeWriter(
        out, fps=int(fps), features=features, robot_type=robot_type or attrs.get("robot_type"), use_videos=use_videos
    ) as writer:
        for start, end in tqdm(list(zip(starts, episode_ends, strict=True)), desc="import episodes", unit="ep"):
            block = {key: np.asarray(array[start:end]) for key, array in renamed.items()}
            frames = []
            for t in range(end - start):
                frame = {"task": tasks[int(task_index[start + t])]}
                for key, values in block.items():
                    value = values[t]
                    frame[key] = value.reshape(features[key]["shape"]) if value.ndim == 0 else value
                frames.append(frame)
            writer.write_episode(frames)
    return {"episodes": len(episode_ends), "frames": int(episode_ends[-1]) if len(episode_ends) else 0, "out": str(out)}


def read_zarr(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a ReplayBuffer as numpy, keyed ``data/<key>`` and ``meta/<key>``."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    arrays = {f"data/{k}": root["data"][k][:] for k in root["data"].array_keys()}
    arrays.update({f"meta/{k}": root["meta"][k][:] for k in root["meta"].array_keys()})
    return arrays
