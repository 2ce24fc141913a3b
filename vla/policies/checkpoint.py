"""Checkpoints: a directory of config.json + model.safetensors + stats.safetensors. No pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vla.policies.config import PolicyConfig
from vla.policies.flow_policy import FlowPolicy

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE = "config.json", "model.safetensors", "stats.safetensors"


def flatten_stats(stats: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{feature}/{name}": value.contiguous() for feature, d in stats.items() for name, value in d.items()}


def unflatten_stats(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        feature, name = key.rsplit("/", 1)
        stats.setdefault(feature, {})[name] = value
    return stats


def save_policy(
    policy: FlowPolicy, stats: dict[str, dict[str, torch.Tensor]], directory: str | Path, extra: dict | None = None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    policy.config.save(directory / CONFIG_FILE)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    save_file(flatten_stats(stats), str(directory / STATS_FILE))
    if extra:
        (directory / "info.json").write_text(json.dumps(extra, indent=2))
    return directory


def load_policy(directory: str | Path, device: str = "cpu") -> FlowPolicy:
    directory = Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a policy checkpoint (missing {', '.join(missing)})")
    policy = FlowPolicy(PolicyConfig.load(directory / CONFIG_FILE))
    policy.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    policy.stats = unflatten_stats(load_file(str(directory / STATS_FILE)))
    return policy.to(device).eval()


def save_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """The optimizer's tensors as safetensors and its param groups as JSON (no pickle)."""
    opt_state = optimizer.state_dict()
    tensors = {
        f"{pid}/{name}": t for pid, s in opt_state["state"].items() for name, t in s.items() if torch.is_tensor(t)
    }
    save_file(tensors, str(directory / "optimizer_state.safetensors"))
    (directory / "optimizer_param_groups.json").write_text(json.dumps(opt_state["param_groups"]))


def load_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    groups = json.loads((directory / "optimizer_param_groups.json").read_text())
    flat = load_file(str(directory / "optimizer_state.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
