"""TACO (Yang et al. 2025): test-time selection among sampled action chunks by a pseudo-count.

* ``fit_taco``: for every frame of the policy's SFT dataset, sample M chunks from a fixed noise
  bank and keep the verifier feature of the chunk closest (L2, normalized action space) to the
  recorded one (the reference's "high-fidelity feature search"); train a Coin Flipping Network
  on those features; store it beside the policy checkpoint (config JSON + safetensors), bound to
  that policy by a fingerprint of its weights.
* ``TacoVerifier``: scores features (pseudo-counts) and picks the highest.
* ``TacoPolicy``: a policy wrapper for closed-loop control: N candidates from a fixed noise bank
  reused at every step, the observation encoded once for all of them, the highest count executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from vla.policies.checkpoint import WEIGHTS_FILE, load_policy
from vla.verifiers.cfn import (
    CFNConfig,
    CoinFlippingNetwork,
    cfn_loss,
    pseudo_counts,
    rademacher_targets,
    select_highest_count,
)

log = logging.getLogger(__name__)

VERIFIER_DIR = "verifier_taco"  # inside the policy checkpoint directory
NOISE_BANK_SEED = 42  # the reference's fixed noise set


@dataclass
class TacoFitConfig:
    policy: Path = field(default=Path("data/runs/train/checkpoints/last"), metadata={"help": "policy checkpoint"})
    dataset: Path = field(default=Path("data/datasets/robomimic_Lift"), metadata={"help": "the policy's SFT dataset"})
    num_candidates: int = field(default=16, metadata={"help": "M chunks per frame in the feature search (ref: 50)"})
    epochs: int = field(default=16, metadata={"help": "passes over the features"})
    batch_size: int = field(default=512, metadata={"help": "CFN batch"})
    lr: float = field(default=1e-3, metadata={"help": "peak of the one-cycle schedule (Adam)"})
    cfn: CFNConfig = field(default_factory=CFNConfig)
    max_frames: int | None = field(default=None, metadata={"help": "use at most this many frames (evenly spaced)"})
    holdout_episodes: float = field(
        default=0.1, metadata={"help": "share of episodes kept out of CFN training to calibrate the OOD threshold"}
    )
    false_alarm_rate: float = field(
        default=0.05, metadata={"help": "OOD threshold: this share of held-out frames falls below it"}
    )
    seed: int = 0
    out: Path | None = field(default=None, metadata={"help": f"default: <policy>/{VERIFIER_DIR}"})


def noise_bank(num: int, chunk_size: int, action_dim: int, seed: int = NOISE_BANK_SEED) -> Tensor:
    """(num, H, A) standard normal noises, the same for every call with the same arguments."""
    if num < 1:
        raise ValueError(f"the number of candidates must be >= 1, got {num}")
    return torch.randn((num, chunk_size, action_dim), generator=torch.Generator().manual_seed(seed))


def policy_fingerprint(checkpoint: Path) -> str:
    """A digest of the policy's weights: a verifier is valid for exactly these."""
    digest = hashlib.sha256((Path(checkpoint) / WEIGHTS_FILE).read_bytes()).hexdigest()
    return digest[:16]


@torch.no_grad()
def search_features(policy, sampler, indices: Tensor, bank: Tensor, batch_size: int = 64) -> Tensor:
    """(F, d) features: per frame, that of the bank candidate nearest the recorded chunk."""
    features = []
    for start in tqdm(range(0, len(indices), batch_size), desc="feature search", unit="batch"):
        batch = sampler.batch(indices[start : start + batch_size])
        b = len(batch[next(iter(batch))])
        noise = bank[None].expand(b, *bank.shape)
        chunks, feats = policy.sample_action_chunks(batch, bank.shape[0], noise=noise, return_features=True)
        recorded = policy.action_norm(torch.as_tensor(batch["action"]).float())
        distance = ((policy.action_norm(chunks) - recorded[:, None]) ** 2).flatten(2).sum(-1)
        features.append(feats[torch.arange(b), distance.argmin(1)])
    return torch.cat(features)


class TacoVerifier:
    """A fitted CFN bound to one policy; ``counts(features)`` and ``select(features)``."""

    def __init__(self, network: CoinFlippingNetwork, policy_fingerprint: str, ood: dict | None = None):
        self.network = network.eval()
        self.policy_fingerprint = policy_fingerprint
        # {"threshold": count, "false_alarm_rate": ..., "heldout_frames": ...}: a best candidate
        # counted below the threshold marks the state as out of distribution
        self.ood = ood

    def out_of_distribution(self, best_counts: Tensor) -> Tensor:
        """(B,) bool: the best candidate's count is below the calibrated threshold."""
        if self.ood is None:
            return torch.zeros(best_counts.shape, dtype=torch.bool)
        return best_counts < self.ood["threshold"]

    @torch.no_grad()
    def counts(self, features: Tensor) -> Tensor:
        """Pseudo-counts of (..., d) features; NaN or a wrong size is refused before scoring."""
        d = self.network.config.feature_dim
        if features.shape[-1] != d:
            raise ValueError(f"the verifier scores {d}-d features, got {features.shape[-1]}-d")
        if not torch.isfinite(features).all():
            raise ValueError("verifier features contain NaN or inf")
        flat = features.reshape(-1, d).float()
        return pseudo_counts(self.network(flat)).reshape(features.shape[:-1])

    def select(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, N, d) -> (index of the highest count (B,), counts (B, N))."""
        counts = self.counts(features)
        return select_highest_count(counts, generator), counts

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "verifier": "taco",
            "policy_fingerprint": self.policy_fingerprint,
            "cfn": asdict(self.network.config),
            "ood": self.ood,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        return directory


def load_taco(policy_checkpoint: Path, directory: Path | None = None) -> TacoVerifier:
    """The verifier stored for ``policy_checkpoint``; refused if it was fitted to another policy."""
    policy_checkpoint = Path(policy_checkpoint).resolve()
    directory = Path(directory) if directory else policy_checkpoint / VERIFIER_DIR
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no TACO verifier in {directory}; fit one with `vla verifier fit --policy {policy_checkpoint}`"
        )
    config = json.loads((directory / "config.json").read_text())
    expected = policy_fingerprint(policy_checkpoint)
    if config["policy_fingerprint"] != expected:
        raise ValueError(
            f"the verifier in {directory} was fitted to another policy (weights {config['policy_fingerprint']}, "
            f"this one {expected}); fit it again for this checkpoint"
        )
    network = CoinFlippingNetwork(CFNConfig(**config["cfn"]))
    network.load_state_dict(load_file(str(directory / "model.safetensors")))
    return TacoVerifier(network, config["policy_fingerprint"], config.get("ood"))


def train_cfn(features: Tensor, config: TacoFitConfig) -> CoinFlippingNetwork:
    """Adam with a one-cycle schedule onto fixed per-sample coin flips (MSE)."""
    cfn_config = CFNConfig(**{**asdict(config.cfn), "feature_dim": int(features.shape[1])})
    torch.manual_seed(config.seed)
    network = CoinFlippingNetwork(cfn_config)
    targets = rademacher_targets(len(features), cfn_config.output_dim, config.seed)
    optimizer = torch.optim.Adam(network.trunk.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(features) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(2, config.epochs * steps_per_epoch)
    )
    generator = torch.Generator().manual_seed(config.seed)
    network.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="fit CFN", unit="step")
    for epoch in range(config.epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(features), config.batch_size):
            index = order[start : start + config.batch_size]
            loss = cfn_loss(network(features[index]), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{total / len(features):.4f}")
    bar.close()
    return network.eval()


def fit_taco(config: TacoFitConfig) -> Path:
    """Feature search over the SFT dataset, CFN training, and the verifier saved beside the policy."""
    from vla.datasets.chunks import ChunkSampler, load_frames

    checkpoint = Path(config.policy).resolve()
    policy = load_policy(checkpoint)
    pc = policy.config
    table = load_frames(config.dataset, pc.vector_features, pc.image_features)
    sampler = ChunkSampler(table, pc.chunk_size)
    indices = torch.arange(len(table))
    if config.max_frames and config.max_frames < len(indices):
        indices = torch.from_numpy(np.linspace(0, len(table) - 1, config.max_frames).round().astype(np.int64))
    bank = noise_bank(config.num_candidates, pc.chunk_size, pc.action_dim)
    log.info("feature search: %d frames x %d candidates", len(indices), config.num_candidates)
    features = search_features(policy, sampler, indices, bank)
    held = heldout_mask(table.episode_ends[indices.numpy()], config.holdout_episodes)
    network = train_cfn(features[~held], config)
    verifier = TacoVerifier(network, policy_fingerprint(checkpoint))
    if held.any():
        threshold = float(torch.quantile(verifier.counts(features[held]), config.false_alarm_rate))
        verifier.ood = {
            "threshold": threshold,
            "false_alarm_rate": config.false_alarm_rate,
            "heldout_frames": int(held.sum()),
        }
    out = verifier.save(Path(config.out) if config.out else checkpoint / VERIFIER_DIR)
    counts = verifier.counts(features[~held])
    summary = {
        "frames": len(indices),
        "heldout_frames": int(held.sum()),
        "ood": verifier.ood,
        "num_candidates": config.num_candidates,
        "feature_dim": int(features.shape[1]),
        "train_count_median": float(counts.median()),
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    (out / "fit.json").write_text(json.dumps(summary, indent=2))
    log.info("verifier saved in %s (median pseudo-count on its data %.1f)", out, summary["train_count_median"])
    return out


def heldout_mask(episode_ends: np.ndarray, share: float) -> Tensor:
    """Frames of the last ``share`` of episodes (whole episodes, at least one when there are two
    or more): calibration data the CFN never saw."""
    episodes = np.unique(episode_ends)
    if share <= 0 or len(episodes) < 2:
        return torch.zeros(len(episode_ends), dtype=torch.bool)
    held = episodes[-max(1, round(share * len(episodes))) :]
    return torch.from_numpy(np.isin(episode_ends, held))


class TacoPolicy:
    """``select_action`` like ``FlowPolicy``'s, choosing each chunk among ``num_samples``
    candidates by the verifier. Candidates come from one fixed noise bank, reused at every
    step; the observation is encoded once for all of them. N=1 gives the plain policy's chunk
    for the bank's first noise."""

    def __init__(self, policy, verifier: TacoVerifier, num_samples: int, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.policy, self.verifier, self.num_samples = policy, verifier, num_samples
        self.config = policy.config
        self.bank = noise_bank(num_samples, policy.config.chunk_size, policy.config.action_dim)
        self.generator = torch.Generator().manual_seed(seed)
        self._queue: deque[np.ndarray] = deque()
        self.last_counts: Tensor | None = None
        self.last_choice: Tensor | None = None
        # per row of the last call: the winning candidate, its pseudo-count and the OOD flag
        self.last_verdict: dict[str, list] | None = None
        self.decisions = 0  # chunks chosen, and how many of them were flagged out of distribution
        self.out_of_distribution = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the policy's
        return getattr(self.policy, name)

    def reset(self) -> None:
        self._queue.clear()

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """(B, H, A): per row, the candidate with the highest pseudo-count."""
        b = self.policy.observation_spec.check_batch(obs)
        noise = self.bank[None].expand(b, *self.bank.shape)
        chunks, features = self.policy.sample_action_chunks(obs, self.num_samples, noise=noise, return_features=True)
        choice, counts = self.verifier.select(features, self.generator)
        self.last_counts, self.last_choice = counts, choice
        best = counts[torch.arange(b), choice]
        flags = self.verifier.out_of_distribution(best)
        self.last_verdict = {
            "candidate": choice.tolist(),
            "pseudo_count": best.tolist(),
            "out_of_distribution": flags.tolist(),
        }
        self.decisions += b
        self.out_of_distribution += int(flags.sum())
        return chunks[torch.arange(b), choice]

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        if not self._queue:
            chunk = self.predict_action_chunk(obs)[:, : self.config.n_action_steps].cpu().numpy()
            self._queue.extend(chunk.transpose(1, 0, 2))
        return self._queue.popleft()
