"""`vla demo`: the one job a newcomer runs (issue #2 stage: demonstrations -> dataset -> summary).

Collects scripted demonstrations on the default task into a LeRobot v3 dataset, then writes
``summary.json``/``summary.md`` and an MP4 (+ PNG preview) of one recorded episode, read back
from the dataset itself. Re-running replaces the previous demo output.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MARKER = ".vla-demo"


@dataclass
class DemoConfig:
    env: str = field(default="robomimic/Lift", metadata={"help": "task to demonstrate"})
    episodes: int = field(default=10, metadata={"help": "successful demonstrations to record"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators"})
    image_size: int = 84
    seed: int = 0
    out: Path = field(default=Path("data/demo"), metadata={"help": "output directory (replaced on re-run)"})


def episode_frames(dataset, episode: int, cameras: list[str]) -> dict[str, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one episode per camera key, decoded from the dataset."""
    start = int(dataset.meta.episodes["dataset_from_index"][episode])
    stop = int(dataset.meta.episodes["dataset_to_index"][episode])
    frames: dict[str, list] = {k: [] for k in cameras}
    for i in range(start, stop):
        item = dataset[i]
        for key in cameras:
            image = item[key].numpy()
            if np.issubdtype(image.dtype, np.floating):
                image = np.rint(image * 255).astype(np.uint8)
            frames[key].append(image.transpose(1, 2, 0))
    return {k: np.stack(v) for k, v in frames.items()}


def run_demo(config: DemoConfig) -> int:
    from sim.collect import CollectConfig, collect
    from vla.datasets.lerobot_io import dataset_info, load_dataset
    from vla.video import tile_frames, write_video

    out = Path(config.out)
    if out.exists():
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} exists and was not made by `vla demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `vla demo`; replaced when it runs again\n")

    result = collect(CollectConfig(env=config.env, episodes=config.episodes, out=out / "dataset",
                                   num_envs=config.num_envs, image_size=config.image_size, seed=config.seed))
    if result.written == 0:
        log.error("no successful episode was recorded")
        return 1
    info = dataset_info(out / "dataset")
    dataset = load_dataset(out / "dataset", return_uint8=True)
    cameras = [k for k, f in dataset.meta.features.items() if f["dtype"] in ("video", "image")]
    frames = episode_frames(dataset, 0, cameras)
    video = write_video(out / "episode_000.mp4", tile_frames(list(frames.values())), fps=info["fps"])
    preview = tile_frames([np.stack([v[0], v[-1]]) for v in frames.values()])
    preview = np.concatenate(list(preview), axis=0)  # first frame above last frame
    import imageio.v2 as imageio

    imageio.imwrite(out / "episode_000_first_last.png", preview.repeat(3, 0).repeat(3, 1))

    summary = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "collection": result.to_dict(),
        "dataset": {k: info[k] for k in ("episodes", "frames", "fps", "tasks")},
        "episode_lengths": result.episode_lengths,
        "video": str(video),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lengths = np.asarray(result.episode_lengths)
    (out / "summary.md").write_text(
        f"# vla demo: {config.env}\n\n"
        f"- scripted expert success: {result.successes}/{result.attempted} episodes "
        f"({100 * result.success_rate:.0f}%)\n"
        f"- dataset: `{out / 'dataset'}` (LeRobot v3): {info['episodes']} episodes, {info['frames']} frames "
        f"at {info['fps']} fps, cameras {', '.join(cameras)}\n"
        f"- episode length: mean {lengths.mean():.1f}, min {lengths.min()}, max {lengths.max()} steps\n"
        f"- task: {', '.join(info['tasks'])}\n"
        f"- video of episode 0: `{video.name}`; first/last frame: `episode_000_first_last.png`\n"
        f"- wall time: {result.seconds:.0f} s\n"
    )
    print((out / "summary.md").read_text())
    return 0
