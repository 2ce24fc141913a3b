"""Training samples from a LeRobot dataset: one observation and the next H actions.

The frames a policy needs are decoded once into memory (small sim datasets: tens of MB), so
a CPU training step never waits on video decoding. Chunks that run past the end of an
episode repeat its last action (diffusion_policy's padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vla import keys
from vla.datasets.lerobot_io import decode_frames, load_dataset


@dataclass
class FrameTable:
    """Every frame of a dataset: vectors (N, D) float32, images (N, H, W, 3) uint8, tasks."""

    vectors: dict[str, Tensor]
    images: dict[str, Tensor]
    actions: Tensor
    tasks: list[str]
    episode_ends: np.ndarray  # exclusive end index of each frame's episode, per frame
    fps: int

    def __len__(self) -> int:
        return self.actions.shape[0]


def load_frames(root: str | Path, vector_features: Sequence[str], image_features: Sequence[str]) -> FrameTable:
    dataset = load_dataset(root, return_uint8=True)
    features = dataset.meta.features
    wanted = [*vector_features, *image_features, keys.ACTION]
    missing = [k for k in wanted if k not in features]
    if missing:
        available = sorted(
            k for k in features if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")
        )
        raise KeyError(
            f"dataset {root} lacks feature(s) {missing} that the policy config asks for; it has: {available}"
        )
    table = dataset.hf_dataset.with_format("numpy")
    n = dataset.num_frames

    def column(key: str) -> Tensor:
        values = np.stack(table[key]).reshape(n, -1).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"dataset feature {key} contains NaN or inf")
        return torch.from_numpy(values)

    vectors = {k: column(k) for k in vector_features}
    actions = column(keys.ACTION)
    images: dict[str, Tensor] = {}
    block = 256
    for start in tqdm(range(0, n, block) if image_features else [], desc="decode frames", unit="blk", leave=False):
        decoded = decode_frames(dataset, start, min(start + block, n), image_features)
        for k, v in decoded.items():
            images.setdefault(k, torch.empty((n, *v.shape[1:]), dtype=torch.uint8))[start : start + len(v)] = (
                torch.from_numpy(v)
            )
    task_names = list(dataset.meta.tasks.sort_values("task_index").index)
    tasks = [task_names[int(i)] for i in np.asarray(table["task_index"]).reshape(-1)]
    episode_index = np.asarray(table["episode_index"]).reshape(-1)
    ends_of_episode = {int(e): int(np.flatnonzero(episode_index == e)[-1]) + 1 for e in np.unique(episode_index)}
    episode_ends = np.array([ends_of_episode[int(e)] for e in episode_index], dtype=np.int64)
    return FrameTable(vectors, images, actions, tasks, episode_ends, int(dataset.meta.fps))


class ChunkSampler:
    """Random training batches of (observation, H-action chunk), reproducible from a generator."""

    def __init__(self, table: FrameTable, chunk_size: int):
        self.table = table
        self.chunk_size = chunk_size
        offsets = np.arange(len(table))[:, None] + np.arange(chunk_size)[None, :]
        self.chunk_index = torch.from_numpy(np.minimum(offsets, table.episode_ends[:, None] - 1))

    def batch(self, indices: Tensor) -> dict[str, object]:
        batch: dict[str, object] = {k: v[indices] for k, v in self.table.vectors.items()}
        batch.update({k: v[indices] for k, v in self.table.images.items()})
        batch[keys.ACTION] = self.table.actions[self.chunk_index[indices]]
        batch[keys.TASK] = [self.table.tasks[i] for i in indices.tolist()]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, object]:
        return self.batch(torch.randint(0, len(self.table), (batch_size,), generator=generator))
