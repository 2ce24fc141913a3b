"""`vla dataset view`: one episode as a video a person can read: its cameras on top, and below them
its actions and state over time with a moving cursor, interventions shaded and success marked.
Also as a rerun recording (``.rrd``) when rerun-sdk is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets.lerobot_io import decode_frames, load_dataset

INTERVENTION = "intervention"


def _episode_range(dataset, episode: int) -> tuple[int, int]:
    if not 0 <= episode < dataset.num_episodes:
        raise ValueError(f"{dataset.root} has episodes 0..{dataset.num_episodes - 1}; asked for {episode}")
    episodes = dataset.meta.episodes
    return int(episodes["dataset_from_index"][episode]), int(episodes["dataset_to_index"][episode])


def _columns(dataset, start: int, stop: int) -> dict[str, np.ndarray]:
    names = [k for k in (keys.ACTION, keys.OBS_STATE, INTERVENTION, keys.SUCCESS) if k in dataset.meta.features]
    table = dataset.hf_dataset.select_columns(names)
    return {
        k: np.stack([np.asarray(table[i][k], dtype=np.float32).reshape(-1) for i in range(start, stop)]) for k in names
    }


def _plot_strip(columns: dict[str, np.ndarray], width: int, height: int) -> tuple[np.ndarray, float, float]:
    """The plots as an RGB image, and the x pixel range of their time axis (for the cursor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, axes = plt.subplots(2, 1, figsize=(width / dpi, height / dpi), dpi=dpi, sharex=True)
    steps = np.arange(len(columns[keys.ACTION]))
    for ax, key, label in ((axes[0], keys.ACTION, "action"), (axes[1], keys.OBS_STATE, "state")):
        if key in columns:
            ax.plot(steps, columns[key], linewidth=0.8)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=6)
        if INTERVENTION in columns:
            human = columns[INTERVENTION][:, 0] > 0.5
            ax.fill_between(steps, 0, 1, where=human, transform=ax.get_xaxis_transform(), color="orange", alpha=0.2)
        if keys.SUCCESS in columns and (columns[keys.SUCCESS][:, 0] > 0.5).any():
            ax.axvline(int(np.argmax(columns[keys.SUCCESS][:, 0] > 0.5)), color="green", linestyle="--", linewidth=1)
    axes[1].set_xlabel("step (orange: a person in control, green: success)", fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    box = axes[0].get_window_extent()
    plt.close(fig)
    return image, float(box.x0), float(box.x1)


def episode_video(root: str | Path, episode: int, out: str | Path, camera_size: int = 256) -> Path:
    """An MP4 of one episode: cameras over plots of its actions and state, with a cursor."""
    from vla.video import tile_frames, write_video

    dataset = load_dataset(root)
    start, stop = _episode_range(dataset, episode)
    columns = _columns(dataset, start, stop)
    cameras = decode_frames(dataset, start, stop, dataset.meta.camera_keys) if dataset.meta.camera_keys else {}
    views = []
    for frames in cameras.values():
        scale = max(1, camera_size // frames.shape[1])
        views.append(frames.repeat(scale, axis=1).repeat(scale, axis=2))
    top = tile_frames(views) if views else np.zeros((stop - start, 0, 2 * camera_size, 3), np.uint8)
    width = top.shape[2]
    strip, x0, x1 = _plot_strip(columns, width, max(160, width // 3))
    n = stop - start
    frames = np.empty((n, top.shape[1] + strip.shape[0], width, 3), np.uint8)
    for t in range(n):
        frames[t, : top.shape[1]] = top[t]
        plot = strip[:, :width].copy()
        x = int(round(x0 + (x1 - x0) * (t / max(1, n - 1))))
        plot[:, max(0, x - 1) : x + 1] = (220, 30, 30)
        frames[t, top.shape[1] :, : plot.shape[1]] = plot
    return write_video(out, frames, fps=int(dataset.meta.fps), min_size=1)


def episode_rerun(root: str | Path, episode: int, out: str | Path) -> Path:
    """A rerun recording of one episode: cameras, state, actions and intervention flags per step."""
    try:
        import rerun as rr
    except ImportError:
        raise RuntimeError(
            "a rerun recording needs the rerun-sdk package (pip install rerun-sdk); "
            "without it, write an MP4 (--out episode.mp4)"
        ) from None
    dataset = load_dataset(root)
    start, stop = _episode_range(dataset, episode)
    columns = _columns(dataset, start, stop)
    cameras = decode_frames(dataset, start, stop, dataset.meta.camera_keys) if dataset.meta.camera_keys else {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rr.init(f"vla_dataset_{Path(root).name}_episode_{episode}", spawn=False)
    rr.save(str(out))
    for t in range(stop - start):
        rr.set_time("step", sequence=t)
        for key, frames in cameras.items():
            rr.log(f"cameras/{keys.camera_of(key)}", rr.Image(frames[t]))
        for key, values in columns.items():
            rr.log(key.replace(".", "/"), rr.Scalars(values[t].astype(np.float64)))
    return out
