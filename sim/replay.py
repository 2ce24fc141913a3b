"""`vla replay`: play a dataset's recorded actions back in the simulator it was recorded in.

Each episode restarts from its own simulator seed (``meta/vla_episodes.jsonl``, written by
``vla collect`` and ``vla record``), its actions are stepped open loop, and the simulator's
success signal is reported: a scripted or teleoperated demonstration that replays to success
shows the dataset's actions are what was executed. A video of the replay is written on request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vla import keys
from vla.datasets.lerobot_io import episode_labels, load_dataset, recording_info


@dataclass
class ReplayConfig:
    dataset: Path = field(default=Path("data/datasets/robomimic_Lift"), metadata={"help": "LeRobot dataset"})
    episodes: tuple[int, ...] | None = field(default=None, metadata={"help": "episode indices (default: all)"})
    video: Path | None = field(default=None, metadata={"help": "write an MP4 of the replayed episodes here"})
    camera: str = field(default="scene", metadata={"help": "camera of the video"})
    image_size: int = field(default=256, metadata={"help": "video frame size"})
    out: Path | None = field(default=None, metadata={"help": "write the per-episode results as JSON here"})


def _episode_actions(dataset, index: int) -> np.ndarray:
    episodes = dataset.meta.episodes
    start, stop = int(episodes["dataset_from_index"][index]), int(episodes["dataset_to_index"][index])
    columns = dataset.hf_dataset.select_columns([keys.ACTION])
    return np.stack([np.asarray(columns[i][keys.ACTION], dtype=np.float32) for i in range(start, stop)])


def replay(config: ReplayConfig) -> dict[str, Any]:
    from sim import make_env
    from vla.video import write_video

    root = Path(config.dataset)
    recording = recording_info(root)
    if "env" not in recording:
        raise ValueError(
            f"{root} does not say which simulator recorded it (no env in meta/vla_recording.json): "
            "only datasets from `vla collect` or `vla record` can be replayed"
        )
    if recording.get("action_label", "command") != "command":
        raise ValueError(
            f"{root} stores {recording['action_label']} actions, not the commands sent to the simulator; "
            "they cannot be replayed through the task's controller"
        )
    seeds = {e["episode_index"]: e.get("seed") for e in episode_labels(root)}
    dataset = load_dataset(root)
    indices = list(config.episodes) if config.episodes is not None else list(range(dataset.num_episodes))
    missing = [i for i in indices if not 0 <= i < dataset.num_episodes]
    if missing:
        raise ValueError(f"{root} has episodes 0..{dataset.num_episodes - 1}; asked for {missing}")
    unseeded = [i for i in indices if seeds.get(i) is None]
    if unseeded:
        raise ValueError(
            f"episodes {unseeded[:10]} of {root} have no recorded simulator seed (meta/vla_episodes.jsonl), "
            "so their scenes cannot be rebuilt"
        )
    env = make_env(recording["env"], num_envs=1, obs_mode="state", image_size=config.image_size, vectorization="sync")
    results, frames = [], []
    noise = float(recording.get("action_noise") or 0.0)
    try:
        for index in tqdm(indices, desc=f"replay {root.name}", unit="ep"):
            actions = _episode_actions(dataset, index)
            env.reset_episodes([seeds[index]])
            success = False
            for action in actions:
                if config.video is not None:
                    frames.append(env.render(config.camera)[0])
                _, _, terminated, truncated, info = env.step(action[None])
                success |= bool(info["success"][0])
                if terminated[0] or truncated[0]:
                    break
            results.append({"episode": index, "seed": seeds[index], "steps": len(actions), "success": success})
    finally:
        env.close()
    rate = sum(r["success"] for r in results) / max(1, len(results))
    summary = {
        "dataset": str(root),
        "env": recording["env"],
        "episodes": len(results),
        "replay_success_rate": rate,
        "recorded_action_noise": noise,
        "results": results,
    }
    if noise:
        summary["note"] = "recorded with DART noise: the stored actions are the expert's clean ones, not the executed"
    if config.video is not None and frames:
        summary["video"] = str(write_video(config.video, np.stack(frames), fps=dataset.meta.fps))
    if config.out is not None:
        Path(config.out).write_text(json.dumps(summary, indent=2))
    return summary
