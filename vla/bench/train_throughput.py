"""`vla bench train`: training throughput (samples/s) of `vla train` beside `lerobot-train`.

Both run as their own command-line programs on the same local LeRobot dataset and batch size.
Each runs twice, for a short and a long number of steps; the per-step time is the difference
divided by the extra steps, so start-up (imports, dataset loading, model building) cancels out
and only steady-state training is compared. Runs are interleaved per length so machine noise
hits every entry alike.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OUR_IMAGE_POLICY = (
    "--policy.vector-features",
    "observation.state",
    "--policy.image-features",
    "observation.images.scene",
    "observation.images.wrist",
    "--policy.use-language",
    "--policy.d-model",
    "64",
    "--policy.n-expert-layers",
    "2",
)


@dataclass
class BenchTrainConfig:
    dataset: Path = field(default=Path("data/datasets/lift100"), metadata={"help": "local LeRobot v3 dataset"})
    batch_size: int = field(default=8, metadata={"help": "batch size of every trainer"})
    steps: tuple[int, int] = field(default=(10, 40), metadata={"help": "short and long run lengths"})
    heads: tuple[str, ...] = field(
        default=("meanflow", "flow_matching"), metadata={"help": "our heads (image + language config)"}
    )
    peers: tuple[str, ...] = field(default=("act", "diffusion"), metadata={"help": "lerobot-train policy types"})
    timeout_s: float = field(default=900.0, metadata={"help": "per training run"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def _ours(head: str, dataset: Path, batch: int, steps: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vla.cli.main",
        "train",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--save-every",
        str(steps),
        "--log-every",
        str(steps),
        "--warmup-steps",
        "1",
        "--policy.head",
        head,
        *OUR_IMAGE_POLICY,
    ]


def _lerobot(policy_type: str, dataset: Path, batch: int, steps: int, out: Path) -> list[str]:
    lerobot_train = shutil.which("lerobot-train") or str(Path(sys.executable).parent / "lerobot-train")
    return [
        lerobot_train,
        f"--dataset.repo_id=local/{dataset.name}",
        f"--dataset.root={dataset}",
        f"--policy.type={policy_type}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--policy.pretrained_backbone_weights=null",
        f"--steps={steps}",
        f"--batch_size={batch}",
        "--wandb.enable=false",
        f"--output_dir={out}",
        "--save_checkpoint=false",
        f"--log_freq={steps}",
        "--num_workers=1",
    ]


def _timed(command: list[str], timeout_s: float) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def run_bench_train(config: BenchTrainConfig) -> list[dict]:
    dataset = Path(config.dataset).resolve()
    if not (dataset / "meta" / "info.json").exists():
        raise FileNotFoundError(f"{dataset} is not a LeRobot v3 dataset (no meta/info.json)")
    short, long = config.steps
    if not 0 < short < long:
        raise ValueError(f"steps must be (short, long) with 0 < short < long, got {config.steps}")
    entries = {f"vla train {h}": (_ours, h) for h in config.heads}
    entries.update({f"lerobot-train {p}": (_lerobot, p) for p in config.peers})
    times: dict[str, dict[int, float]] = {name: {} for name in entries}
    with tempfile.TemporaryDirectory(prefix="vla-bench-train-") as tmp:
        for steps in (short, long):
            for i, (name, (build, arg)) in enumerate(entries.items()):
                out = Path(tmp) / f"{i}-{steps}"
                print(f"  {name}: {steps} steps ...", flush=True)
                times[name][steps] = _timed(build(arg, dataset, config.batch_size, steps, out), config.timeout_s)
    rows = []
    for name, t in times.items():
        per_step = (t[long] - t[short]) / (long - short)
        rows.append(
            {
                "trainer": name,
                "batch_size": config.batch_size,
                "s_per_step": per_step,
                "samples_per_s": config.batch_size / per_step if per_step > 0 else float("nan"),
                "startup_s": t[short] - short * per_step,
            }
        )
    reference = rows[0]["samples_per_s"]
    print(f"\ntraining throughput on {dataset.name}, batch {config.batch_size}, steady state ({long}-{short} steps)")
    print(f"{'trainer':<32}{'samples/s':>12}{'s/step':>10}{'start-up s':>12}{'vs ' + rows[0]['trainer']:>28}")
    for row in rows:
        print(
            f"{row['trainer']:<32}{row['samples_per_s']:>12.1f}{row['s_per_step']:>10.3f}{row['startup_s']:>12.1f}"
            f"{row['samples_per_s'] / reference:>27.2f}x"
        )
    return rows
