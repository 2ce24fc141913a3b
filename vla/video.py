"""MP4 writing and frame tiling for rollouts and dataset previews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def tile_frames(views: Sequence[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile K videos of shape (T, H, W, 3) into one (T, rows*H, columns*W, 3) video.

    Views of different heights/widths are padded to the largest.
    """
    if not views:
        raise ValueError("nothing to tile")
    length = max(v.shape[0] for v in views)
    height = max(v.shape[1] for v in views)
    width = max(v.shape[2] for v in views)
    columns = columns or len(views)
    rows = -(-len(views) // columns)
    canvas = np.zeros((length, rows * height, columns * width, 3), dtype=np.uint8)
    for k, view in enumerate(views):
        r, c = divmod(k, columns)
        # a shorter view holds its last frame (an episode that ended early)
        padded = (
            np.concatenate([view, np.repeat(view[-1:], length - view.shape[0], axis=0)])
            if view.shape[0] < length
            else view
        )
        canvas[:, r * height : r * height + view.shape[1], c * width : c * width + view.shape[2]] = padded
    return canvas


def write_video(path: str | Path, frames: np.ndarray, fps: int, min_size: int = 256) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 MP4, upscaled (nearest) so small sim images stay viewable."""
    import imageio.v2 as imageio

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    scale = max(1, -(-min_size // max(frames.shape[1], 1)))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    # H.264 needs even sizes
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ffmpeg at "error": its info lines ("[mp4 @ ...] Starting second pass") would cut through
    # the progress bar of a long collection or evaluation.
    imageio.mimwrite(
        path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
    )
    return path
