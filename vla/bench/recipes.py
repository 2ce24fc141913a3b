"""`vla bench recipes`: tasks x recipes through the whole recipe, one table.

For each task: collect ``--episodes`` scripted demonstrations (or reuse ``--datasets
TASK=DIR``), then for each recipe train a policy (`vla train --recipe`) and evaluate it on
``--eval-episodes`` unseen episodes (`vla eval`). Every stage writes a small JSON with its wall
time when it finishes, and a stage that finished is skipped when the sweep runs again, so an
interrupted sweep resumes (an interrupted training resumes from its ``training_state``).

    <out>/<suite>_<task>/dataset_<state|rgb>/    the demonstrations (+ collect.json)
    <out>/<suite>_<task>/<recipe>/train/         the run (+ train.json)
    <out>/<suite>_<task>/<recipe>/eval/          results.json, videos, eval.png
    <out>/recipes.md, recipes.json, recipes.png  the table and a bar plot with 95% intervals
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class BenchRecipesConfig:
    tasks: tuple[str, ...] = field(
        default=("maniskill/PushCube-v1", "maniskill/StackCube-v1"),
        metadata={"help": "<suite>/<task> names with a scripted expert (vla envs)"},
    )
    recipes: tuple[str, ...] = field(
        default=("state-dm1-v1",), metadata={"help": "recipe names (vla/training/recipes.py, docs/recipes.md)"}
    )
    episodes: int = field(default=100, metadata={"help": "demonstrations to collect per task"})
    datasets: tuple[str, ...] = field(
        default=(), metadata={"help": "TASK=DIR: reuse this dataset for TASK instead of collecting"}
    )
    action_noise: float = field(default=0.0, metadata={"help": "DART noise while collecting (0: clean)"})
    steps: int | None = field(default=None, metadata={"help": "override every recipe's training steps"})
    eval_episodes: int = field(default=100, metadata={"help": "unseen evaluation episodes per policy"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation seeds (collection uses 0)"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators for collection and evaluation"})
    videos: int = field(default=2, metadata={"help": "evaluation episodes to record as MP4"})
    out: Path = field(default=Path("data/runs/recipes"), metadata={"help": "output directory"})


def _task_dir(config: BenchRecipesConfig, task: str) -> Path:
    return config.out / task.replace("/", "_")


def _reused_datasets(config: BenchRecipesConfig) -> dict[str, Path]:
    reused = {}
    for pair in config.datasets:
        task, sep, path = pair.partition("=")
        if not sep or task not in config.tasks:
            raise ValueError(f"--datasets entries are TASK=DIR with TASK one of {list(config.tasks)}, got {pair!r}")
        reused[task] = Path(path)
    return reused


def _stage(marker: Path, run) -> dict[str, Any]:
    """Run a stage once: its record (with wall seconds) is kept in ``marker``, and a stage whose
    marker exists is not run again."""
    if marker.exists():
        return json.loads(marker.read_text())
    start = time.perf_counter()
    record = run()
    record["seconds"] = round(time.perf_counter() - start, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(record, indent=2, default=str))
    return record


def _collect(config: BenchRecipesConfig, task: str, obs_mode: str) -> tuple[Path, dict[str, Any]]:
    from sim.collect import CollectConfig, collect

    directory = _task_dir(config, task) / f"dataset_{obs_mode}"
    marker = directory.parent / f"collect_{obs_mode}.json"

    def run() -> dict[str, Any]:
        shutil.rmtree(directory, ignore_errors=True)  # a half-collected dataset is collected again
        result = collect(
            CollectConfig(
                env=task,
                episodes=config.episodes,
                out=directory,
                num_envs=config.num_envs,
                obs_mode=obs_mode,
                action_noise=config.action_noise,
            )
        )
        if result.interrupted:
            raise KeyboardInterrupt
        return result.to_dict()

    return directory, _stage(marker, run)


def recipe_train_config(recipe: str, dataset: Path, top: dict[str, Any]):
    """The TrainConfig of ``recipe`` on ``dataset`` with ``top`` (partial TrainConfig JSON) over it,
    as `vla train --recipe` builds it from flags."""
    from vla.cli.args import config_from_dict, deep_merge
    from vla.training.recipes import recipe_overrides
    from vla.training.trainer import TrainConfig

    return config_from_dict(
        TrainConfig, deep_merge(recipe_overrides(recipe, dataset), {"dataset": str(dataset), **top})
    )


def _train(config: BenchRecipesConfig, recipe: str, dataset: Path, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    from vla.training.trainer import train

    out = run_dir / "train"

    def run() -> dict[str, Any]:
        top: dict[str, Any] = {"out": str(out)}
        if config.steps is not None:
            top["steps"] = config.steps
            top["warmup_steps"] = min(200, max(1, config.steps // 10))
        train_config = recipe_train_config(recipe, dataset, top)
        resume = (out / "training_state").exists()
        checkpoint = train(replace(train_config, resume=resume))
        summary_path = out / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        return {"checkpoint": str(checkpoint), "steps": train_config.steps, **summary}

    return out, _stage(run_dir / "train.json", run)


def _evaluate(config: BenchRecipesConfig, task: str, checkpoint: Path, run_dir: Path) -> dict[str, Any]:
    from vla.evaluation.evaluate import EvalConfig, evaluate

    out = run_dir / "eval"

    def run() -> dict[str, Any]:
        shutil.rmtree(out, ignore_errors=True)
        results = evaluate(
            EvalConfig(
                policy=checkpoint,
                env=task,
                episodes=config.eval_episodes,
                num_envs=config.num_envs,
                seed=config.eval_seed,
                out=out,
                videos=config.videos,
            )
        )
        return {k: results[k] for k in ("episodes", "success_rate", "success_ci95", "nfe", "head")}

    return _stage(run_dir / "eval.json", run)


def run_bench_recipes(config: BenchRecipesConfig) -> list[dict[str, Any]]:
    from vla.training.recipes import RECIPES

    recipes = {name: RECIPES.get(name) for name in config.recipes}  # unknown names fail before any work
    reused = _reused_datasets(config)
    config.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for task in config.tasks:
        for name, recipe in recipes.items():
            obs_mode = "state" if recipe.observation == "state" else "rgb"
            if task in reused:
                dataset, collected = reused[task], {"seconds": None, "episodes_written": None}
            else:
                dataset, collected = _collect(config, task, obs_mode)
            run_dir = _task_dir(config, task) / name
            _, trained = _train(config, name, dataset, run_dir)
            evaluated = _evaluate(config, task, Path(trained["checkpoint"]), run_dir)
            rows.append(
                {
                    "task": task,
                    "recipe": name,
                    "demonstrations": collected.get("episodes_written"),
                    "collect_minutes": _minutes(collected.get("seconds")),
                    "train_steps": trained["steps"],
                    "train_minutes": _minutes(trained["seconds"]),
                    "eval_minutes": _minutes(evaluated["seconds"]),
                    "head": evaluated["head"],
                    "nfe": evaluated["nfe"],
                    "episodes": evaluated["episodes"],
                    "success": evaluated["success_rate"],
                    "success_ci95": evaluated["success_ci95"],
                }
            )
            _write(config, rows)
    _plot(config, rows)
    print(table(rows))
    return rows


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 1)


def table(rows: list[dict[str, Any]]) -> str:
    def minutes(value: float | None) -> str:
        return "reused" if value is None else f"{value:g}"

    lines = [
        "| task | recipe | demos | collect min | train steps | train min | eval min | NFE | success (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["success_ci95"]
        lines.append(
            f"| {r['task']} | {r['recipe']} | {r['demonstrations'] or '-'} | {minutes(r['collect_minutes'])} | "
            f"{r['train_steps']} | {minutes(r['train_minutes'])} | {minutes(r['eval_minutes'])} | {r['nfe']} | "
            f"{100 * r['success']:.0f}% ({100 * low:.0f}-{100 * high:.0f}%) of {r['episodes']} |"
        )
    return "\n".join(lines)


def _write(config: BenchRecipesConfig, rows: list[dict[str, Any]]) -> None:
    (config.out / "recipes.json").write_text(json.dumps(rows, indent=2))
    (config.out / "recipes.md").write_text(table(rows) + "\n")


def _plot(config: BenchRecipesConfig, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    width = 0.8 / max(len(recipes), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(len(recipes), 1) ** 0.5), 4))
    for j, recipe in enumerate(recipes):
        xs, ys, errs = [], [], [[], []]
        for i, task in enumerate(tasks):
            row = next((r for r in rows if r["task"] == task and r["recipe"] == recipe), None)
            if row is None:
                continue
            low, high = row["success_ci95"]
            xs.append(i + (j - (len(recipes) - 1) / 2) * width)
            ys.append(100 * row["success"])
            errs[0].append(100 * (row["success"] - low))
            errs[1].append(100 * (high - row["success"]))
        ax.bar(xs, ys, width, yerr=np.array(errs), capsize=3, label=recipe)
    ax.set_xticks(range(len(tasks)), [t.split("/")[-1] for t in tasks], rotation=15)
    ax.set_ylabel("success (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(config.out / "recipes.png", dpi=100)
    plt.close(fig)
