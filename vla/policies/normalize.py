"""Feature normalization whose statistics are computed once from the dataset and travel in
the checkpoint (stats.safetensors), never recomputed at load time."""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-6


def compute_stats(values: Tensor) -> dict[str, Tensor]:
    """Per-dimension statistics of (N, D) values."""
    values = values.reshape(values.shape[0], -1).double()
    return {
        "mean": values.mean(0).float(),
        "std": values.std(0, unbiased=False).float(),
        "min": values.min(0).values.float(),
        "max": values.max(0).values.float(),
    }


class Normalizer(nn.Module):
    """mean_std: (x - mean) / std; min_max: to [-1, 1]; identity: unchanged. Buffers are saved."""

    def __init__(self, mode: str, dim: int):
        super().__init__()
        self.mode = mode
        for name in ("mean", "std", "min", "max"):
            self.register_buffer(name, torch.zeros(dim))

    def set_stats(self, stats: dict[str, Tensor]) -> None:
        for name in ("mean", "std", "min", "max"):
            getattr(self, name).copy_(stats[name].reshape(-1))

    def _scale_shift(self) -> tuple[Tensor, Tensor]:
        if self.mode == "mean_std":
            return self.std.clamp_min(EPS), self.mean
        if self.mode == "min_max":
            half_range = ((self.max - self.min) / 2).clamp_min(EPS)
            return half_range, (self.max + self.min) / 2
        return torch.ones_like(self.mean), torch.zeros_like(self.mean)

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self._scale_shift()
        return (x - shift) / scale

    def inverse(self, x: Tensor) -> Tensor:
        scale, shift = self._scale_shift()
        return x * scale + shift
