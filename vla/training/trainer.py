"""`vla train`: a flow policy from a local LeRobot v3 dataset.

Run directory layout:

    <out>/config.json                   the TrainConfig (printed and saved at start)
    <out>/tensorboard/                   scalars: loss/*, train/lr, train/samples_per_s
    <out>/checkpoints/<step>/            policy checkpoint (EMA weights): config.json,
                                         model.safetensors, stats.safetensors
    <out>/checkpoints/last -> <step>
    <out>/training_state/                raw weights, optimizer, EMA, RNG, step (for --resume)

Normalization statistics are computed once from the dataset and stored in every checkpoint.
Resuming restores weights, optimizer, EMA and the sampling RNG, so an interrupted run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vla import keys
from vla.datasets.chunks import ChunkSampler, FrameTable, load_frames
from vla.datasets.lerobot_io import recording_info
from vla.policies.checkpoint import (
    flatten_stats,
    load_optimizer_state,
    save_optimizer_state,
    save_policy,
    unflatten_stats,
)
from vla.policies.config import PolicyConfig
from vla.policies.flow_policy import FlowPolicy
from vla.policies.normalize import compute_stats
from vla.threads import set_thread_budget

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    dataset: Path = field(default=Path("data/datasets/robomimic_Lift"), metadata={"help": "LeRobot v3 dataset dir"})
    out: Path = field(default=Path("data/runs/train"), metadata={"help": "run directory"})
    recipe: str = field(
        default="",
        metadata={
            "help": "start from a named recipe (vla/training/recipes.py, docs/recipes.md); its features come from "
            "the dataset, and --config and flags override it"
        },
    )
    policy: PolicyConfig = field(
        default_factory=PolicyConfig,
        metadata={
            "help": "the policy (--policy.<field>); its feature shapes and action_dim are filled from the dataset"
        },
    )
    steps: int = field(default=5000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=256, metadata={"help": "action chunks per optimizer step"})
    lr: float = field(
        default=3e-4, metadata={"help": "peak AdamW learning rate (linear warmup, then cosine decay to 0)"}
    )
    weight_decay: float = field(default=1e-6, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=200, metadata={"help": "steps of linear learning-rate warmup"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this"})
    ema_decay: float = field(default=0.995, metadata={"help": "0 disables EMA"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and the batch sampling"})
    log_every: int = field(default=50, metadata={"help": "log losses and samples/s every N steps"})
    save_every: int = field(default=1000, metadata={"help": "checkpoint every N steps (and at the end)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out"})
    threads: int = field(
        default=0, metadata={"help": "torch CPU threads (0: the trainer role's budget, every core; see vla/threads.py)"}
    )
    wandb: bool = field(default=False, metadata={"help": "also log to Weights & Biases (needs wandb + network)"})


def policy_config_for(table: FrameTable, policy: PolicyConfig, dataset: Path | None = None) -> PolicyConfig:
    """Shapes and action size from the frames; for an image policy, how the dataset's images
    were rendered (so evaluation renders them the same way)."""
    shapes = {k: list(v.shape[1:]) for k, v in table.vectors.items()}
    shapes.update({k: list(v.shape[1:]) for k, v in table.images.items()})
    render_quality = recording_info(dataset).get("render_quality") if dataset and policy.image_features else None
    return dataclasses.replace(
        policy, feature_shapes=shapes, action_dim=int(table.actions.shape[1]), image_render_quality=render_quality
    )


def dataset_stats(table: FrameTable) -> dict[str, dict[str, torch.Tensor]]:
    stats = {k: compute_stats(v) for k, v in table.vectors.items()}
    stats[keys.ACTION] = compute_stats(table.actions)
    return stats


def lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class StepProfile:
    """Mean milliseconds per training step of each phase (data, encode, head, backward, ...):
    the ``time/*_ms`` entries of the step metrics, averaged over the steady-state steps."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key.startswith("time/"):
                self.totals[key] = self.totals.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {
            k.removeprefix("time/").removesuffix("_ms"): round(v / max(self.count, 1), 3)
            for k, v in self.totals.items()
        }


class EMA:
    """Exponential moving average of the weights; the EMA model is what checkpoints hold."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        # one fused call over all tensors: a per-tensor Python loop costs more than the math on a small model
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], 1 - self.decay)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)


def _save_training_state(directory: Path, step: int, policy, optimizer, ema: EMA | None, generator) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    save_optimizer_state(optimizer, tmp)
    save_file({"generator": generator.get_state(), "torch": torch.get_rng_state()}, str(tmp / "rng_state.safetensors"))
    (tmp / "training_step.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)  # atomic: an interrupt never leaves a half-written state


def _load_training_state(directory: Path, policy, optimizer, ema: EMA | None, generator) -> int:
    policy.load_state_dict(load_file(str(directory / "model.safetensors")))
    if ema is not None:
        ema.shadow = load_file(str(directory / "ema.safetensors"))
    load_optimizer_state(optimizer, directory)
    rng = load_file(str(directory / "rng_state.safetensors"))
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    return int(json.loads((directory / "training_step.json").read_text())["step"])


def train(config: TrainConfig) -> Path:
    """Train and return the final checkpoint directory."""
    out = Path(config.out)
    set_thread_budget("trainer", config.threads)
    state_dir = out / "training_state"
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if config.resume and not state_dir.exists():
        raise FileNotFoundError(f"--resume: no training_state in {out}")
    out.mkdir(parents=True, exist_ok=True)

    table = load_frames(config.dataset, config.policy.vector_features, config.policy.image_features)
    stats_file = out / "stats.safetensors"
    if config.resume and stats_file.exists():
        stats = unflatten_stats(load_file(str(stats_file)))
    else:
        stats = dataset_stats(table)
        save_file(flatten_stats(stats), str(stats_file))
    policy_config = policy_config_for(table, config.policy, config.dataset)
    run_config = dataclasses.replace(config, policy=policy_config)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(run_config), indent=2, default=str))
    log.info("train config:\n%s", json.dumps(dataclasses.asdict(run_config), indent=2, default=str))

    torch.manual_seed(config.seed)
    policy = FlowPolicy(policy_config)
    policy.set_normalization(stats)
    policy.train()
    # fused: one kernel over all parameters. On the d_model-64 state policy the per-tensor loop took
    # ~9.5 ms of a ~115 ms CPU step (vla bench train-profile, "optimizer"); clip + step measured
    # alone went from 7.6 ms to 1.2-1.8 ms fused
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.lr, betas=(0.95, 0.999), weight_decay=config.weight_decay, fused=True
    )
    ema = EMA(policy, config.ema_decay) if config.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(config.seed)
    step = _load_training_state(state_dir, policy, optimizer, ema, generator) if config.resume else 0
    sampler = ChunkSampler(table, policy_config.chunk_size)
    n_params = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    log.info("%d frames, %d trainable parameters, head %s", len(table), n_params, policy_config.head)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"), purge_step=step)
    wandb_run = _start_wandb(config, out) if config.wandb else None
    bar = tqdm(total=config.steps, initial=step, desc=f"train {policy_config.head}", unit="step")
    window_start, window_samples = time.perf_counter(), 0
    first_step, timed_from = step, None  # steady-state rate: from the 10th step of this process on
    step_profile = StepProfile()
    checkpoint = None
    try:
        while step < config.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            clock = time.perf_counter()
            batch = sampler.sample(config.batch_size, generator)
            phases = {"time/data_ms": time.perf_counter() - clock}
            clock = time.perf_counter()
            loss, metrics = policy(batch, generator=generator)
            phases["time/forward_ms"] = time.perf_counter() - clock
            clock = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            phases["time/backward_ms"] = time.perf_counter() - clock
            clock = time.perf_counter()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
            optimizer.step()
            phases["time/optimizer_ms"] = time.perf_counter() - clock
            clock = time.perf_counter()
            if ema is not None:
                ema.update(policy)
            phases["time/ema_ms"] = time.perf_counter() - clock
            metrics.update({k: 1e3 * v for k, v in phases.items()})
            step += 1
            if timed_from is not None:
                step_profile.add(metrics)
            if step - first_step == min(10, config.steps - first_step - 1):
                timed_from = (step, time.perf_counter())
            window_samples += config.batch_size
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                elapsed = time.perf_counter() - window_start
                metrics.update(
                    {
                        "train/lr": lr_at(step - 1, config),
                        "train/grad_norm": float(grad_norm),
                        "train/samples_per_s": window_samples / max(elapsed, 1e-9),
                    }
                )
                for name, value in metrics.items():
                    writer.add_scalar(name, value, step)
                if wandb_run is not None:
                    wandb_run.log(metrics, step=step)
                bar.set_postfix(loss=f"{metrics['loss/total']:.4f}", sps=f"{metrics['train/samples_per_s']:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % config.save_every == 0 or step == config.steps:
                checkpoint = _checkpoint(out, step, policy, ema, stats, optimizer, generator)
    except KeyboardInterrupt:
        log.warning("interrupted at step %d; saving so that --resume continues from here", step)
        checkpoint = _checkpoint(out, step, policy, ema, stats, optimizer, generator)
        raise
    finally:
        bar.close()
        writer.close()
    if timed_from is not None and step > timed_from[0]:
        rate = (step - timed_from[0]) / (time.perf_counter() - timed_from[1])
        summary = {
            "steps": step,
            "steps_per_s": rate,
            "samples_per_s": rate * config.batch_size,
            "threads": torch.get_num_threads(),
            "step_ms": step_profile.means(),
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        log.info("%.1f steps/s (%.0f samples/s) on %d threads", rate, rate * config.batch_size, torch.get_num_threads())
    return checkpoint if checkpoint is not None else out / "checkpoints" / "last"


def _checkpoint(out: Path, step: int, policy: FlowPolicy, ema: EMA | None, stats, optimizer, generator) -> Path:
    _save_training_state(out / "training_state", step, policy, optimizer, ema, generator)
    inference = FlowPolicy(policy.config)
    inference.load_state_dict(ema.shadow if ema is not None else policy.state_dict())
    directory = save_policy(inference, stats, out / "checkpoints" / f"{step:06d}", extra={"step": step})
    last = out / "checkpoints" / "last"
    if last.is_symlink() or last.exists():
        last.unlink()
    last.symlink_to(directory.name)
    return directory


def _start_wandb(config: TrainConfig, out: Path):
    try:
        import wandb
    except ImportError as err:
        raise RuntimeError("--wandb needs the wandb package (pip install wandb)") from err
    return wandb.init(project="vla-stack", dir=str(out), config=dataclasses.asdict(config))
