"""`vla bench train-profile`: where a training step goes, per observation kind, head and thread count.

Each configuration is a short real `vla train` run (in this process, one after the other) on the
same dataset; the trainer times every phase of every step (batch sampling, observation encoder,
action head with its JVP for MeanFlow, backward, optimizer, EMA) and the steady-state means
land in ``train_summary.json``. The table puts them side by side, in ms per step and as shares.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PHASES = ("data", "encode", "head", "backward", "optimizer", "ema")


@dataclass
class BenchTrainProfileConfig:
    dataset: Path = field(
        default=Path("data/datasets/lift100"), metadata={"help": "LeRobot v3 dataset with cameras and object poses"}
    )
    recipes: tuple[str, ...] = field(
        default=("state-fm-v1", "state-dm1-v1", "image-dm1-small-v1"),
        metadata={"help": "recipes to profile (their model and batch size)"},
    )
    heads: tuple[str, ...] = field(
        default=("flow_matching", "meanflow"), metadata={"help": "each recipe is run with each of these heads"}
    )
    meanflow_dudt: tuple[str, ...] = field(
        default=("jvp", "central_difference"), metadata={"help": "the meanflow head runs with each du/dt method"}
    )
    threads: tuple[int, ...] = field(default=(1, 2), metadata={"help": "torch CPU threads to compare"})
    steps: int = field(default=60, metadata={"help": "training steps per configuration (the first 10 are not timed)"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def run_bench_train_profile(config: BenchTrainProfileConfig) -> list[dict[str, Any]]:
    from vla.bench.recipes import recipe_train_config
    from vla.training.recipes import RECIPES
    from vla.training.trainer import train

    for name in config.recipes:
        RECIPES.get(name)  # unknown names fail before any work
    rows = []
    with tempfile.TemporaryDirectory(prefix="vla_train_profile_") as tmp:
        variants = [
            (head, dudt) for head in config.heads for dudt in (config.meanflow_dudt if head == "meanflow" else ("",))
        ]
        for recipe in config.recipes:
            for head, dudt in variants:
                for threads in config.threads:
                    out = Path(tmp) / f"{recipe}_{head}_{dudt}_{threads}"
                    top = {
                        "out": str(out),
                        "steps": config.steps,
                        "warmup_steps": 1,
                        "save_every": 10**9,
                        "threads": threads,
                        "policy": {"head": head, **({"meanflow_dudt": dudt} if dudt else {})},
                    }
                    train(recipe_train_config(recipe, config.dataset, top))
                    summary = json.loads((out / "train_summary.json").read_text())
                    batch = json.loads((out / "config.json").read_text())["batch_size"]
                    rows.append(
                        {
                            "recipe": recipe,
                            "head": f"{head} ({dudt})" if dudt else head,
                            "threads": threads,
                            "batch_size": batch,
                            "steps_per_s": round(summary["steps_per_s"], 2),
                            "samples_per_s": round(summary["samples_per_s"]),
                            "step_ms": summary["step_ms"],
                        }
                    )
    print(table(rows))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | head | threads | batch | steps/s | samples/s | "
        + " | ".join(f"{p} ms" for p in PHASES)
        + " | other ms |",
        "|---|---|---|---|---|---|" + "---|" * (len(PHASES) + 1),
    ]
    for r in rows:
        ms = r["step_ms"]
        total = 1e3 / r["steps_per_s"]
        # encode and head are inside the forward pass; what the forward does besides them is "other"
        other = total - sum(ms.get(p, 0.0) for p in PHASES)
        cells = [f"{ms.get(p, 0.0):.1f} ({100 * ms.get(p, 0.0) / total:.0f}%)" for p in PHASES]
        lines.append(
            f"| {r['recipe']} | {r['head']} | {r['threads']} | {r['batch_size']} | {r['steps_per_s']:.1f} | "
            f"{r['samples_per_s']} | " + " | ".join(cells) + f" | {other:.1f} |"
        )
    return "\n".join(lines)
