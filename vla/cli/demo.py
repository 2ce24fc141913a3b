"""`vla demo`: the one job a newcomer runs: demonstrations -> dataset -> DM1 policy -> evaluation.

1. collects scripted demonstrations on the default task into a LeRobot v3 dataset, with an
   MP4 (+ PNG preview) of one recorded episode read back from the dataset;
2. trains a DM1 policy (one-step MeanFlow) on them, state-only by default;
3. evaluates it in parallel simulators: results.json, videos and a plot;
3b. fits TACO's verifier on the demonstrations and evaluates the same policy with it, same seeds;
4. writes ``summary.json``/``summary.md`` over all of it.

Re-running replaces the previous demo output.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MARKER = ".vla-demo"


@dataclass
class DemoConfig:
    env: str = field(default="robomimic/Lift", metadata={"help": "task to demonstrate"})
    episodes: int = field(default=20, metadata={"help": "successful demonstrations to record"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators"})
    image_size: int = field(default=84, metadata={"help": "camera images are image_size x image_size"})
    seed: int = field(default=0, metadata={"help": "base seed: episode k of env i is seeded from (seed, i, k)"})
    out: Path = field(default=Path("data/demo"), metadata={"help": "output directory (replaced on re-run)"})
    train_steps: int = field(default=3000, metadata={"help": "DM1 optimizer steps (0: stop after the dataset)"})
    eval_episodes: int = field(default=20, metadata={"help": "evaluation episodes"})
    taco_samples: int = field(
        default=16, metadata={"help": "TACO candidates per chunk in a second evaluation, same seeds (0: no TACO stage)"}
    )
    rl_minutes: float = field(
        default=4.0, metadata={"help": "wall time of the RL stage on a few-shot policy (0: no RL stage)"}
    )
    rl_sft_steps: int = field(default=300, metadata={"help": "supervised steps of the few-shot policy RL starts from"})


def episode_frames(dataset, episode: int, cameras: list[str]) -> dict[str, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one episode per camera key, decoded from the dataset."""
    from vla.datasets.lerobot_io import decode_frames

    start = int(dataset.meta.episodes["dataset_from_index"][episode])
    stop = int(dataset.meta.episodes["dataset_to_index"][episode])
    return decode_frames(dataset, start, stop, cameras)


def run_demo(config: DemoConfig) -> int:
    from sim.collect import CollectConfig, collect
    from vla.datasets.lerobot_io import dataset_info, load_dataset
    from vla.video import tile_frames, write_video

    out = Path(config.out)
    if out.exists():
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} exists and was not made by `vla demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `vla demo`; replaced when it runs again\n")

    result = collect(
        CollectConfig(
            env=config.env,
            episodes=config.episodes,
            out=out / "dataset",
            num_envs=config.num_envs,
            image_size=config.image_size,
            seed=config.seed,
        )
    )
    if result.written == 0:
        log.error("no successful episode was recorded")
        return 1
    info = dataset_info(out / "dataset")
    dataset = load_dataset(out / "dataset", return_uint8=True)
    cameras = [k for k, f in dataset.meta.features.items() if f["dtype"] in ("video", "image")]
    frames = episode_frames(dataset, 0, cameras)
    video = write_video(out / "episode_000.mp4", tile_frames(list(frames.values())), fps=info["fps"])
    preview = tile_frames([np.stack([v[0], v[-1]]) for v in frames.values()])
    preview = np.concatenate(list(preview), axis=0)  # first frame above last frame
    import imageio.v2 as imageio

    imageio.imwrite(out / "episode_000_first_last.png", preview.repeat(3, 0).repeat(3, 1))

    summary = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "collection": result.to_dict(),
        "dataset": {k: info[k] for k in ("episodes", "frames", "fps", "tasks")},
        "episode_lengths": result.episode_lengths,
        "video": str(video),
    }
    lengths = np.asarray(result.episode_lengths)
    text = (
        f"# vla demo: {config.env}\n\n"
        f"- scripted expert success: {result.successes}/{result.attempted} episodes "
        f"({100 * result.success_rate:.0f}%)\n"
        f"- dataset: `{out / 'dataset'}` (LeRobot v3): {info['episodes']} episodes, {info['frames']} frames "
        f"at {info['fps']} fps, cameras {', '.join(cameras)}\n"
        f"- episode length: mean {lengths.mean():.1f}, min {lengths.min()}, max {lengths.max()} steps\n"
        f"- task: {', '.join(info['tasks'])}\n"
        f"- video of episode 0: `{video.name}`; first/last frame: `episode_000_first_last.png`\n"
        f"- collection wall time: {result.seconds:.0f} s\n"
    )
    if config.train_steps > 0:
        text += _train_and_evaluate(config, out, summary)
        if config.taco_samples > 0:
            text += _taco_stage(config, out, summary)
    if config.rl_minutes > 0:
        text += _rl_stage(config, out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


def state_policy(head: str):
    """The demo's small state-only policy (state + object state, width 64, chunk 8, 4 executed)."""
    from vla import keys
    from vla.policies.config import PolicyConfig

    return PolicyConfig(
        vector_features=(keys.OBS_STATE, keys.OBS_ENV_STATE),
        head=head,
        d_model=64,
        n_expert_layers=2,
        chunk_size=8,
        n_action_steps=4,
    )


def _train_and_evaluate(config: DemoConfig, out: Path, summary: dict) -> str:
    """A state-only DM1 policy (one-step MeanFlow) on the demonstrations, then its evaluation."""
    import time

    from vla.evaluation.evaluate import EvalConfig, evaluate
    from vla.training.trainer import TrainConfig, train

    started = time.perf_counter()
    checkpoint = train(
        TrainConfig(
            dataset=out / "dataset",
            out=out / "train",
            policy=state_policy("meanflow"),
            steps=config.train_steps,
            batch_size=128,
            save_every=config.train_steps,
            seed=config.seed,
        )
    )
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = evaluate(
        EvalConfig(
            policy=checkpoint,
            env=config.env,
            episodes=config.eval_episodes,
            num_envs=config.num_envs,
            out=out / "eval",
            videos=4,
        )
    )
    eval_seconds = time.perf_counter() - started
    low, high = results["success_ci95"]
    latency = results["latency_ms_per_chunk_call"]
    summary["train"] = {"checkpoint": str(checkpoint), "steps": config.train_steps, "seconds": round(train_seconds, 1)}
    summary["eval"] = {k: results[k] for k in ("episodes", "success_rate", "success_ci95", "mean_length", "nfe")}
    summary["eval"]["seconds"] = round(eval_seconds, 1)
    return (
        f"- DM1 policy (state-only, 1-NFE MeanFlow): {config.train_steps} steps in {train_seconds:.0f} s, "
        f"checkpoint `{checkpoint}`\n"
        f"- evaluation on {config.env}: success {100 * results['success_rate']:.0f}% over {results['episodes']} "
        f"episodes (95% CI {100 * low:.0f}-{100 * high:.0f}%), latency p50 {latency['p50']:.1f} ms per chunk "
        f"(batch {latency['batch']}), {eval_seconds:.0f} s; `eval/results.json`, `eval/videos/`, `eval/eval.png`\n"
    )


def _taco_stage(config: DemoConfig, out: Path, summary: dict) -> str:
    """TACO on the demo's policy: the verifier fitted on the demonstrations, then the same
    evaluation (same seeds) choosing each chunk among ``taco_samples`` candidates."""
    import time

    from vla.evaluation.evaluate import EvalConfig, evaluate
    from vla.verifiers.taco import TacoFitConfig, fit_taco

    checkpoint = Path(summary["train"]["checkpoint"])
    started = time.perf_counter()
    verifier = fit_taco(TacoFitConfig(policy=checkpoint, dataset=out / "dataset", seed=config.seed))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = evaluate(
        EvalConfig(
            policy=checkpoint,
            env=config.env,
            episodes=config.eval_episodes,
            num_envs=config.num_envs,
            out=out / "eval_taco",
            videos=0,
            verifier="taco",
            num_samples=config.taco_samples,
        )
    )
    eval_seconds = time.perf_counter() - started
    plain = summary["eval"]["success_rate"]
    summary["taco"] = {
        "verifier": str(verifier),
        "num_samples": config.taco_samples,
        "fit_seconds": round(fit_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        **{k: results[k] for k in ("episodes", "success_rate", "success_ci95", "ood_rate")},
        "success_rate_without": plain,
    }
    return (
        f"- TACO (verifier fitted on the demonstrations in {fit_seconds:.0f} s; {config.taco_samples} candidates "
        f"per chunk): success {100 * results['success_rate']:.0f}% against {100 * plain:.0f}% without, same "
        f"{results['episodes']} seeds; {100 * results['ood_rate']:.0f}% of chunks from states flagged out of "
        f"distribution; `eval_taco/results.json`\n"
    )


def _rl_stage(config: DemoConfig, out: Path, summary: dict) -> str:
    """pi_RL in miniature: a briefly trained flow-matching policy (the few-shot start), then a few
    minutes of Flow-SDE PPO in parallel simulators, evaluated before and after on the same
    fixed seeds with the deterministic sampler."""
    from vla.cli.rl import run_rl
    from vla.rl.trainer import RLConfig
    from vla.training.trainer import TrainConfig, train

    sft = train(
        TrainConfig(
            dataset=out / "dataset",
            out=out / "rl_sft",
            policy=state_policy("flow_matching"),
            steps=config.rl_sft_steps,
            batch_size=128,
            save_every=config.rl_sft_steps,
            seed=config.seed,
        )
    )
    rl = run_rl(
        RLConfig(
            policy=sft,
            env=config.env,
            num_envs=8,
            iterations=10**6,
            max_wall_minutes=config.rl_minutes,
            max_episode_steps=80,
            eval_episodes=config.eval_episodes,
            eval_every=0,
            checkpoint_every=10,
            seed=config.seed,
            out=out / "rl",
        )
    )
    summary["rl"] = rl
    before, after = rl["before"], rl["after"]
    return (
        f"- RL (Flow-SDE PPO, 8 envs) on a few-shot flow-matching policy ({config.rl_sft_steps} supervised "
        f"steps): success {100 * before['success_once']:.0f}% -> {100 * after['success_once']:.0f}% over "
        f"{after['episodes']} fixed-seed episodes, {rl['iterations']} iterations, {rl['env_steps']} env steps, "
        f"{rl['wall_seconds']:.0f} s; checkpoint `{rl['checkpoint']}`, curve `rl/learning_curve.png`\n"
    )
