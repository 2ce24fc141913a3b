"""`vla bench threads`: training speed alone and beside a running `vla eval`, with the thread
budgets of ``vla/threads.py`` and with torch's defaults, side by side in one run.

Each measurement is a fresh ``vla train`` process on the same dataset and policy; its
steady-state rate comes from the trainer's own ``train_summary.json`` (steps after the tenth).
The competitor is a ``vla eval`` of a checkpoint with its simulator workers, started before the
trainer and killed after it. "torch defaults" is how every process ran before the budgets: all
cores per process and OpenMP workers that spin while waiting (``OMP_WAIT_POLICY`` unset,
``VLA_THREADS_*`` set to the core count).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vla.threads import ROLE_DEFAULTS, cpu_count


@dataclass
class BenchThreadsConfig:
    dataset: Path = field(
        default=Path("data/demo/dataset"), metadata={"help": "LeRobot dataset to train on (make demo writes this one)"}
    )
    checkpoint: Path = field(
        default=Path("data/demo/train/checkpoints/last"), metadata={"help": "policy the competing `vla eval` runs"}
    )
    env: str = field(default="robomimic/Lift", metadata={"help": "the competing evaluation's task"})
    steps: int = field(default=300, metadata={"help": "training steps per measurement"})
    batch_size: int = field(default=128, metadata={"help": "training batch size (the demo's)"})
    d_model: int = field(default=64, metadata={"help": "policy width (the demo's state recipe)"})
    n_expert_layers: int = field(default=2, metadata={"help": "action-expert layers (the demo's state recipe)"})
    vector_features: tuple[str, ...] = field(
        default=("observation.state", "observation.environment_state"),
        metadata={"help": "the policy's vector inputs (the demo's state recipe)"},
    )
    timeout_s: float = field(
        default=600.0,
        metadata={
            "help": "per measurement; a trainer still running then is stopped and its progress reported as a lower bound"
        },
    )
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def _env(budgeted: bool) -> dict[str, str]:
    env = dict(os.environ)
    if budgeted:
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what the set-up exports; measured as such whatever the caller has
        for role in ROLE_DEFAULTS:
            env.pop(f"VLA_THREADS_{role.upper()}", None)
    else:
        env.pop("OMP_WAIT_POLICY", None)
        for role in ("trainer", "eval"):  # torch's default: every core in every process
            env[f"VLA_THREADS_{role.upper()}"] = str(cpu_count())
    return env


def _competitor(config: BenchThreadsConfig, out: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "vla.cli.main",
        "eval",
        "--policy",
        str(config.checkpoint),
        "--env",
        config.env,
        "--episodes",
        "100000",
        "--num-envs",
        "2",
        "--videos",
        "0",
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _train(config: BenchThreadsConfig, out: Path, env: dict[str, str]) -> dict:
    """The trainer's steady-state rate; a run past ``timeout_s`` is stopped and reported with
    the steps its progress bar reached (a lower bound: start-up is inside the window)."""
    command = [
        sys.executable,
        "-m",
        "vla.cli.main",
        "train",
        "--dataset",
        str(config.dataset),
        "--out",
        str(out),
        "--steps",
        str(config.steps),
        "--batch-size",
        str(config.batch_size),
        "--save-every",
        str(config.steps),
        "--log-every",
        str(config.steps),
        "--warmup-steps",
        "1",
        "--policy.vector-features",
        *config.vector_features,
        "--policy.d-model",
        str(config.d_model),
        "--policy.n-expert-layers",
        str(config.n_expert_layers),
    ]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=config.timeout_s)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        done = [int(m) for m in re.findall(r"(\d+)/" + str(config.steps) + r" \[", stderr)]
        reached = max(done, default=0)
        return {"steps_per_s": reached / config.timeout_s, "threads": None, "timed_out": True, "steps_reached": reached}
    if result.returncode != 0:
        raise RuntimeError(f"vla train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {**json.loads((out / "train_summary.json").read_text()), "timed_out": False}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_bench_threads(config: BenchThreadsConfig) -> list[dict]:
    for path, what in (
        (config.dataset / "meta" / "info.json", "dataset"),
        (config.checkpoint / "config.json", "checkpoint"),
    ):
        if not path.exists():
            raise FileNotFoundError(
                f"{what} {path.parent if what == 'dataset' else config.checkpoint} not found "
                "(`make demo` writes the default ones)"
            )
    rows = []
    with tempfile.TemporaryDirectory(prefix="vla-bench-threads-") as tmp:
        for budgeted in (True, False):
            label = "budgets (vla/threads.py)" if budgeted else "torch defaults"
            env = _env(budgeted)
            for beside_eval in (False, True):
                run = Path(tmp) / f"{int(budgeted)}{int(beside_eval)}"
                print(
                    f"  {label}, {'beside vla eval' if beside_eval else 'alone'}: {config.steps} steps ...", flush=True
                )
                competitor = _competitor(config, run / "eval", env) if beside_eval else None
                try:
                    if competitor is not None:
                        time.sleep(15)  # let it load and reach its rollout loop
                        if competitor.poll() is not None:
                            raise RuntimeError(
                                f"the competing vla eval exited early:\n{competitor.stderr.read()[-3000:]}"
                            )
                    summary = _train(config, run / "train", env)
                finally:
                    if competitor is not None:
                        _stop(competitor)
                rows.append(
                    {
                        "threads": label,
                        "beside_eval": beside_eval,
                        "steps_per_s": summary["steps_per_s"],
                        "trainer_threads": summary["threads"],
                        "timed_out": summary["timed_out"],
                        "cores": cpu_count(),
                    }
                )
                bound = " (timed out: at least)" if summary["timed_out"] else ""
                print(f"    {summary['steps_per_s']:.2f} steps/s{bound}", flush=True)
    print(f"\nvla train steps/s on {config.dataset.name} (batch {config.batch_size}), {cpu_count()} cores")
    print(f"{'threads':<28}{'alone':>10}{'beside eval':>14}{'kept':>8}")
    for label in dict.fromkeys(r["threads"] for r in rows):
        alone, beside = (
            next(r["steps_per_s"] for r in rows if r["threads"] == label and r["beside_eval"] is b)
            for b in (False, True)
        )
        print(f"{label:<28}{alone:>10.1f}{beside:>14.1f}{beside / alone:>7.0%}")
    return rows
