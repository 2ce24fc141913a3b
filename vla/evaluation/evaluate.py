"""`vla eval`: roll a policy checkpoint out in parallel simulators.

Closed loop per env: each env keeps a queue of ``n_action_steps`` actions from its last
chunk; whenever a queue runs empty, the policy predicts chunks for the whole batch (one
batched call, timed) and only the empty queues are refilled, so an episode that ends never
passes its leftover actions to the next one.

Writes ``results.json`` (success rate with a Wilson 95% interval, returns, lengths, latency
p50/p99 per chunk call, function evaluations), per-episode MP4s of the first episodes plus a
tiled one, and ``eval.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from vla import keys
from vla.observation import check_policy_fits_env
from vla.threads import set_thread_budget

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    policy: Path = field(default=Path("data/runs/train/checkpoints/last"), metadata={"help": "checkpoint directory"})
    env: str = field(
        default="robomimic/Lift",
        metadata={"help": "<suite>/<task>, a name `vla envs` lists (the suite registry sim.SUITES)"},
    )
    episodes: int = field(default=50, metadata={"help": "episodes to roll out"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators"})
    seed: int = field(default=1000, metadata={"help": "episode seeds (different from data collection's)"})
    out: Path = field(default=Path("data/runs/eval"), metadata={"help": "output directory"})
    videos: int = field(default=4, metadata={"help": "episodes to record as MP4"})
    max_episode_steps: int | None = field(
        default=None, metadata={"help": "episode step limit (None: the task's own horizon)"}
    )
    n_action_steps: int | None = field(default=None, metadata={"help": "override the policy's executed steps"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "override the policy's NFE"})
    verifier: str | None = field(
        default=None,
        metadata={"help": "re-rank sampled chunks at test time: taco (fit it first: vla verifier fit)"},
    )
    num_samples: int = field(default=16, metadata={"help": "candidate chunks per step with --verifier"})
    render_quality: str | None = field(
        default=None,
        metadata={
            "help": "camera look of the MuJoCo suites (fast or default); None: the one the policy's training images "
            "were rendered with. Another one warns: the policy sees images unlike its training data"
        },
    )
    vectorization: Literal["auto", "sync", "subprocess", "gpu"] = field(
        default="auto",
        metadata={
            "help": "sync (every env in this process), subprocess (worker processes, one per core), gpu (the suite's GPU-batched "
            "simulator) or auto (gpu where the suite has one and CUDA is present; else sync for one env, "
            "subprocess for more)"
        },
    )
    env_options: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "suite options as key=value, e.g. controller=JOINT_TARGET for joint-position policies (RoboMimic)"
        },
    )

    def options(self) -> dict[str, str]:
        return parse_env_options(self.env_options)


def parse_env_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("controller=JOINT_TARGET", ...)`` -> make_env's suite options."""
    bad = [o for o in pairs if "=" not in o]
    if bad:
        raise ValueError(f"env options are key=value, got {bad}")
    return dict(o.split("=", 1) for o in pairs)


# What a checkpoint without a recorded render quality was trained on: the look before there was a choice.
UNRECORDED_RENDER_QUALITY = "default"


def observation_kwargs(policy_config, render_quality: str | None = None) -> dict:
    """make_env's observation arguments for what a policy reads: state only, or its cameras at
    its image size, rendered as its training images were (``render_quality`` overrides that,
    with a warning when it differs)."""
    cameras = tuple(keys.camera_of(k) for k in policy_config.image_features)
    trained = policy_config.image_render_quality or UNRECORDED_RENDER_QUALITY
    if cameras and render_quality is not None and render_quality != trained:
        log.warning(
            "render_quality %s differs from the %s look the policy's training images were rendered with: "
            "it sees images unlike its data (expect lower success)",
            render_quality,
            trained,
        )
    kwargs = {
        "obs_mode": "rgb" if cameras else "state",
        "image_size": policy_config.image_size or (84, 84),
        "cameras": cameras or None,
    }
    if cameras:
        kwargs["render_quality"] = render_quality or trained
    elif render_quality is not None:
        kwargs["render_quality"] = render_quality
    return kwargs


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(config: EvalConfig) -> dict:
    """Roll the policy out on ``config.env``; a task group ("metaworld/MT10", a LIBERO suite)
    runs ``episodes`` on each of its tasks and reports success per task and averaged."""
    from sim import group_members

    members = group_members(config.env)
    if members is not None:
        return _evaluate_group(config, members)
    return _evaluate_task(config)


def _evaluate_group(config: EvalConfig, members: list[str]) -> dict:
    """Each task in ``out/<suite>_<task>/``; ``out/results.json`` has the per-task rows, the
    mean over tasks and a pooled Wilson interval, and ``out/per_task.png`` a bar per task."""
    out = Path(config.out)
    per_task = {}
    for member in members:
        results = _evaluate_task(replace(config, env=member, out=out / member.replace("/", "_")))
        per_task[member] = {k: results[k] for k in ("episodes", "success_rate", "success_ci95", "mean_length")}
    successes = sum(round(r["success_rate"] * r["episodes"]) for r in per_task.values())
    n = sum(r["episodes"] for r in per_task.values())
    summary = {
        "env": config.env,
        "policy": str(config.policy),
        "head": results["head"],
        "nfe": results["nfe"],
        "tasks": len(members),
        "episodes": n,
        "success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "success_ci95": list(wilson_interval(successes, n)),
        "mean_return": None,
        "latency_ms_per_chunk_call": results["latency_ms_per_chunk_call"],
        "per_task": per_task,
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _plot_per_task(summary, out / "per_task.png")
    log.info("%s: mean success over %d tasks %.0f%%", config.env, len(members), 100 * summary["success_rate"])
    return summary


def _plot_per_task(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_task"]
    names = [t.split("/", 1)[1] for t in rows]
    rates = [100 * r["success_rate"] for r in rows.values()]
    low = [100 * (r["success_rate"] - r["success_ci95"][0]) for r in rows.values()]
    high = [100 * (r["success_ci95"][1] - r["success_rate"]) for r in rows.values()]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    ax.bar(range(len(names)), rates, yerr=[low, high], capsize=3, color="tab:blue")
    ax.axhline(
        100 * summary["success_rate"], color="k", ls="--", lw=1, label=f"mean {100 * summary['success_rate']:.0f}%"
    )
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("success (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.set_title(f"{summary['env']}: {summary['episodes'] // max(len(names), 1)} episodes per task")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _evaluate_task(config: EvalConfig) -> dict:
    from sim import make_env
    from vla.policies.checkpoint import load_policy

    set_thread_budget("eval")  # its env workers are separate processes with their own budget
    policy = load_policy(config.policy)
    if config.num_inference_steps:
        policy.config.num_inference_steps = config.num_inference_steps
    if config.verifier is not None:
        from vla.verifiers import VERIFIERS

        policy = VERIFIERS.get(config.verifier)(config.policy, policy, config.num_samples)
    n_action_steps = config.n_action_steps or policy.config.n_action_steps
    if not 1 <= n_action_steps <= policy.config.chunk_size:
        raise ValueError(f"n_action_steps must be in [1, {policy.config.chunk_size}], got {n_action_steps}")
    env = make_env(
        config.env,
        num_envs=config.num_envs,
        **observation_kwargs(policy.config, config.render_quality),
        seed=config.seed,
        max_episode_steps=config.max_episode_steps,
        vectorization=config.vectorization,
        **config.options(),
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    b = env.num_envs
    queues: list[list[np.ndarray]] = [[] for _ in range(b)]
    episodes: list[dict] = []
    latencies: list[float] = []
    record_slots = min(config.videos, config.episodes)
    recording: list[list[np.ndarray] | None] = [None] * b  # frames of the episode an env is recording
    videos: list[np.ndarray] = []
    started = 0

    def maybe_start_recording(i: int) -> None:
        nonlocal started
        if started < record_slots:
            recording[i], started = [], started + 1

    try:
        obs = env.reset()
        check_policy_fits_env(
            policy.observation_spec, policy.config.action_dim, env.spec, obs, config.env, str(config.policy)
        )
        policy.predict_action_chunk(obs)  # warm-up (lazy loads such as the language encoder): not timed
        torch.manual_seed(config.seed)
        for i in range(b):
            maybe_start_recording(i)
        bar = tqdm(total=config.episodes, desc=f"eval {config.env}", unit="ep")
        while len(episodes) < config.episodes:
            if any(not q for q in queues):
                start = time.perf_counter()
                chunk = policy.predict_action_chunk(obs).cpu().numpy()
                latencies.append(time.perf_counter() - start)
                for i in range(b):
                    if not queues[i]:
                        queues[i] = list(chunk[i, :n_action_steps])
            if any(r is not None for r in recording):
                frames = obs.get(keys.image_key(keys.CAMERA_SCENE))
                frames = env.render(keys.CAMERA_SCENE) if frames is None else frames
                for i, frames_i in enumerate(recording):
                    if frames_i is not None:
                        frames_i.append(frames[i])
            actions = np.stack([q.pop(0) for q in queues])
            obs, _, _, _, info = env.step(actions)
            for i, episode in enumerate(info["episode"]):
                if episode is None:
                    continue
                queues[i] = []  # leftover actions never reach the next episode
                if len(episodes) < config.episodes:
                    episodes.append({**episode, "env": i})
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(e['success'] for e in episodes)}/{len(episodes)}")
                if recording[i] is not None:
                    videos.append(np.stack(recording[i]))
                    recording[i] = None
                    maybe_start_recording(i)
        bar.close()
    finally:
        env.close()
    return _write_results(config, policy, episodes, latencies, videos, env.spec.fps, n_action_steps, out)


def _write_results(config, policy, episodes, latencies, videos, fps, n_action_steps, out: Path) -> dict:
    from vla.video import tile_frames, write_video

    successes = sum(bool(e["success"]) for e in episodes)
    n = len(episodes)
    low, high = wilson_interval(successes, n)
    latency_ms = np.asarray(latencies) * 1e3
    results = {
        "env": config.env,
        "policy": str(config.policy),
        "head": policy.config.head,
        "episodes": n,
        "success_rate": successes / max(n, 1),
        "success_ci95": [low, high],
        "mean_return": float(np.mean([e["return"] for e in episodes])) if n else 0.0,
        "mean_length": float(np.mean([e["length"] for e in episodes])) if n else 0.0,
        "episode_lengths": [int(e["length"]) for e in episodes],
        "nfe": policy.config.inference_steps,
        "chunk_size": policy.config.chunk_size,
        "n_action_steps": n_action_steps,
        "verifier": config.verifier,
        "num_samples": config.num_samples if config.verifier else 1,
        # share of chosen chunks whose best pseudo-count fell below the verifier's OOD threshold
        "ood_rate": (policy.out_of_distribution / max(policy.decisions, 1)) if config.verifier else None,
        "latency_ms_per_chunk_call": {
            "batch": config.num_envs,
            "p50": float(np.percentile(latency_ms, 50)) if latencies else None,
            "p99": float(np.percentile(latency_ms, 99)) if latencies else None,
            "calls": len(latencies),
        },
        "config": {k: str(v) for k, v in asdict(config).items()},
        "per_episode": episodes,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    video_dir = out / "videos"
    for k, frames in enumerate(videos):
        write_video(video_dir / f"episode_{k:03d}.mp4", frames, fps=fps)
    if videos:
        write_video(video_dir / "tiled.mp4", tile_frames(videos, columns=min(len(videos), 4)), fps=fps)
    _plot(results, latency_ms, out / "eval.png")
    log.info(
        "success %d/%d (%.1f%%, 95%% CI %.1f-%.1f%%), latency p50 %.1f ms",
        successes,
        n,
        100 * results["success_rate"],
        100 * low,
        100 * high,
        results["latency_ms_per_chunk_call"]["p50"] or 0,
    )
    return results


def _plot(results: dict, latency_ms: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    lengths = results["episode_lengths"]
    colors = ["tab:green" if e["success"] else "tab:red" for e in results["per_episode"]]
    ax1.bar(range(len(lengths)), lengths, color=colors)
    ax1.set_xlabel("episode")
    ax1.set_ylabel("length (steps)")
    low, high = results["success_ci95"]
    ax1.set_title(
        f"{results['env']}: success {100 * results['success_rate']:.0f}% (95% CI {100 * low:.0f}-{100 * high:.0f}%)"
    )
    if len(latency_ms):
        ax2.hist(latency_ms, bins=30, color="tab:blue")
    ax2.set_xlabel(f"latency per chunk call (ms, batch {results['latency_ms_per_chunk_call']['batch']})")
    ax2.set_title(f"{results['head']}, NFE {results['nfe']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
