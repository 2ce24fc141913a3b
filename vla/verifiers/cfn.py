"""Coin Flipping Network (Lobel et al., ICML 2023), as TACO uses it to count how often a
(observation, action chunk) feature was seen in the SFT data.

Each training sample i is regressed onto a fixed random +-1 vector c_i of d coin flips. A
sample seen N times is regressed onto N independent draws, so the least-squares output is
their mean and E||f(x)||^2 / d = 1/N: the pseudo-count is ``d / ||f(x)||^2``. A frozen random
copy of the network, standardized by running statistics, is added to the output (the
random-prior trick): unseen inputs get a large norm, hence a low count. Pure functions for the
math; the module holds only the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class CFNConfig:
    feature_dim: int = 0  # the policy's verifier feature size (filled at fit time)
    hidden_dim: int = field(default=256, metadata={"help": "width (the reference: 1536 for 1024-d pi0.5 features)"})
    num_blocks: int = field(default=3, metadata={"help": "residual MLP blocks"})
    output_dim: int = field(default=20, metadata={"help": "d: coin flips per sample"})
    input_scale: float = field(default=10.0, metadata={"help": "inputs are multiplied by this (reference: 10)"})
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_blocks", "output_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.mlp(x))  # post-LN, as the reference


def _trunk(config: CFNConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(config.feature_dim, config.hidden_dim),
        nn.GELU(),
        nn.LayerNorm(config.hidden_dim),
        *[_ResidualBlock(config.hidden_dim, config.dropout) for _ in range(config.num_blocks)],
        nn.Linear(config.hidden_dim, config.output_dim),
    )


class CoinFlippingNetwork(nn.Module):
    """f(x) = trunk(s x) + standardized frozen prior(s x)."""

    def __init__(self, config: CFNConfig):
        super().__init__()
        if config.feature_dim < 1:
            raise ValueError("CFNConfig.feature_dim must be set (the policy's verifier feature size)")
        self.config = config
        self.trunk = _trunk(config)
        self.prior = _trunk(config)
        for p in self.prior.parameters():
            p.requires_grad_(False)
        self.register_buffer("prior_mean", torch.zeros(config.output_dim))
        self.register_buffer("prior_var", torch.ones(config.output_dim))
        self.register_buffer("prior_count", torch.zeros(()))

    def forward(self, features: Tensor) -> Tensor:
        x = features * self.config.input_scale
        with torch.no_grad():
            prior = self.prior.eval()(x)
            if self.training:  # running statistics of the prior's outputs, updated every batch
                self._update_prior_stats(prior)
            prior = (prior - self.prior_mean) / self.prior_var.clamp_min(1e-8).sqrt()
        return self.trunk(x) + prior

    def _update_prior_stats(self, batch: Tensor) -> None:
        n, mean, var = batch.shape[0], batch.mean(0), batch.var(0, unbiased=False)
        total = self.prior_count + n
        delta = mean - self.prior_mean
        self.prior_var.copy_(
            (self.prior_var * self.prior_count + var * n + delta**2 * self.prior_count * n / total) / total
        )
        self.prior_mean.add_(delta * n / total)
        self.prior_count.copy_(total)


def rademacher_targets(num_samples: int, dim: int, seed: int) -> Tensor:
    """(num_samples, dim) fixed +-1 coin flips: target i depends only on (seed, i)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_samples, dim), generator=generator).float() * 2 - 1


def cfn_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error onto the coin flips."""
    return ((outputs - targets) ** 2).mean()


def pseudo_counts(outputs: Tensor) -> Tensor:
    """d / ||f(x)||^2 per row: the estimated number of times x was seen."""
    return outputs.shape[-1] / (outputs**2).sum(-1).clamp_min(1e-12)


def select_highest_count(counts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Index (per row of a (B, N) tensor) of the highest count, ties broken at random."""
    if counts.ndim != 2:
        raise ValueError(f"counts must be (B, N), got {tuple(counts.shape)}")
    if not torch.isfinite(counts).all():
        raise ValueError("pseudo-counts contain NaN or inf")
    best = counts == counts.max(dim=1, keepdim=True).values
    noise = torch.rand(counts.shape, generator=generator)
    return torch.where(best, noise, torch.full_like(noise, -1.0)).argmax(dim=1)
