"""`vla bench policy`: inference latency per action chunk at batch 1, side by side in one run.

Every (policy, NFE) pair and every LeRobot peer is timed on the same observation, in
interleaved rounds so machine noise hits all alike. LeRobot's diffusion policy (its default
DDPM steps, and DDIM with 10 steps) and ACT are built offline with random weights at their
default sizes, on the same observation shapes, and timed through ``reset`` + ``select_action``
(which makes them predict a fresh chunk).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla import keys


@dataclass
class BenchPolicyConfig:
    policies: tuple[Path, ...] = field(default=(), metadata={"help": "checkpoint directories"})
    nfe: tuple[int, ...] = field(default=(), metadata={"help": "NFE values to sweep (default: each policy's own)"})
    peers: tuple[str, ...] = field(
        default=("diffusion_ddpm", "diffusion_ddim10", "act"),
        metadata={"help": "LeRobot peers to time (none: only ours)"},
    )
    warmup: int = field(default=3, metadata={"help": "untimed calls per entry first"})
    rounds: int = field(default=10, metadata={"help": "interleaved rounds"})
    calls_per_round: int = field(default=2, metadata={"help": "timed calls per entry in each round"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    seed: int = field(default=0, metadata={"help": "seed of the example observation and the noise"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def example_observation(policy, seed: int = 0) -> dict:
    """A batch-1 observation with the policy's shapes (its ``ObservationSpec``): dataset means
    for vectors, noise images, an instruction."""
    rng = np.random.default_rng(seed)
    obs = policy.observation_spec.example(batch_size=1)
    obs[keys.TASK] = ["lift the red cube off the table"]  # also for LeRobot peers, whatever the policy reads
    for key in policy.config.vector_features:
        obs[key] = policy.stats[key]["mean"].numpy()[None].astype(np.float32)
    for key in policy.config.image_features:
        obs[key] = rng.integers(0, 255, size=obs[key].shape, dtype=np.uint8)
    return obs


def _ours(path: Path, nfe: int | None) -> tuple[str, Callable[[], object], dict]:
    from vla.policies.checkpoint import load_policy

    policy = load_policy(path)
    if nfe:
        policy.config.num_inference_steps = nfe
    obs = example_observation(policy)
    label = f"vla {policy.config.head} ({path.parent.parent.name if path.name == 'last' else path.name})"
    meta = {"head": policy.config.head, "nfe": policy.config.inference_steps, "params": _params(policy)}
    return label, lambda: policy.predict_action_chunk(obs), meta


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lerobot_peers(template, names: tuple[str, ...]) -> list[tuple[str, Callable[[], object], dict]]:
    """LeRobot's diffusion policy and ACT on the template policy's observation shapes."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    cfg = template.config
    inputs = {}
    for key in cfg.vector_features:
        kind = FeatureType.ENV if key == keys.OBS_ENV_STATE else FeatureType.STATE
        inputs[key] = PolicyFeature(type=kind, shape=tuple(cfg.feature_shapes[key]))
    for key in cfg.image_features:
        h, w, c = cfg.feature_shapes[key]
        inputs[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(c, h, w))
    outputs = {keys.ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(cfg.action_dim,))}
    obs = example_observation(template)
    batch = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in obs.items() if k != keys.TASK}
    for key in cfg.image_features:
        batch[key] = batch[key].permute(0, 3, 1, 2) / 255.0
    peers = []
    variants = {
        "diffusion_ddpm": ("lerobot diffusion (DDPM, default steps)", DiffusionConfig, DiffusionPolicy, {}),
        "diffusion_ddim10": (
            "lerobot diffusion (DDIM, 10 steps)",
            DiffusionConfig,
            DiffusionPolicy,
            {"noise_scheduler_type": "DDIM", "num_inference_steps": 10},
        ),
        "act": ("lerobot ACT", ACTConfig, ACTPolicy, {}),
    }
    unknown = [n for n in names if n not in variants and n != "none"]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; available: {', '.join(variants)}, none")
    for name in names:
        if name == "none":
            continue
        label, config_cls, policy_cls, overrides = variants[name]
        kwargs = dict(input_features=inputs, output_features=outputs, device="cpu", **overrides)
        if "pretrained_backbone_weights" in config_cls.__dataclass_fields__:
            kwargs["pretrained_backbone_weights"] = None  # no download: random weights
        if config_cls is DiffusionConfig and cfg.image_features:
            h, w, _ = cfg.feature_shapes[cfg.image_features[0]]
            kwargs["crop_shape"] = (int(h * 0.9), int(w * 0.9))
        config = config_cls(**kwargs)
        policy = policy_cls(config).eval()
        steps = getattr(config, "num_inference_steps", None) or getattr(config, "num_train_timesteps", None)
        meta = {
            "head": config_cls.__name__.replace("Config", "").lower(),
            "nfe": steps if config_cls is DiffusionConfig else 1,
            "params": _params(policy),
        }

        def call(policy=policy):
            # reset + select_action: LeRobot fills its observation queue and predicts a fresh chunk
            with torch.no_grad():
                policy.reset()
                return policy.select_action(dict(batch))

        peers.append((label, call, meta))
    return peers


def run_bench_policy(config: BenchPolicyConfig) -> list[dict]:
    from vla.policies.checkpoint import load_policy

    if not config.policies:
        raise ValueError("give at least one checkpoint: --policies DIR [DIR ...]")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    entries = []
    for path in config.policies:
        for nfe in config.nfe or (None,):
            entries.append(_ours(Path(path), nfe))
    if config.peers:
        entries += lerobot_peers(load_policy(config.policies[0]), config.peers)
    for _, call, _ in entries:
        for _ in range(config.warmup):
            call()
    times: list[list[float]] = [[] for _ in entries]
    for _ in range(config.rounds):
        for i, (_, call, _) in enumerate(entries):
            for _ in range(config.calls_per_round):
                start = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - start)
    rows = []
    for (label, _, meta), samples in zip(entries, times, strict=True):
        ms = np.asarray(samples) * 1e3
        rows.append(
            {"policy": label, **meta, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        )
    reference = rows[0]["p50_ms"]
    print(
        f"batch 1, {config.threads} threads, {config.rounds} interleaved rounds x {config.calls_per_round} calls; "
        f"speed-up relative to the first row"
    )
    print("| policy | NFE | params | p50 ms | p99 ms | p50 vs first |\n|---|---|---|---|---|---|")
    for row in rows:
        row["relative_to_first"] = row["p50_ms"] / reference
        print(
            f"| {row['policy']} | {row['nfe']} | {row['params'] / 1e6:.2f}M | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['relative_to_first']:.2f}x |"
        )
    return rows
