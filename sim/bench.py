"""`vla bench sim`: raw simulator vs our wrapper steps/s, side by side in one run.

For each backend: (1) the simulator's own ``step`` on the very object our adapter wraps
(``SingleEnv.raw_step``), (2) the full batched API ``make_env(num_envs=1).step``, the two
alternating step by step on the same simulator so machine noise hits both alike; then (3)
subprocess vector envs at 1..N workers for scaling. With ``--obs-mode rgb`` each MuJoCo suite
runs once per ``--render-qualities`` (sim/rendering.py: MuJoCo's default look and the fast
one), with the milliseconds per camera frame beside the steps/s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sim.rendering import render_quality

DEFAULT_BENCH_ENVS = (
    "maniskill/PickCube-v1",
    "robomimic/Lift",
    "metaworld/pick-place-v3",
    "libero/libero_spatial.0",
)


@dataclass
class BenchSimConfig:
    envs: tuple[str, ...] = field(default=DEFAULT_BENCH_ENVS, metadata={"help": "envs to measure"})
    steps: int = field(default=100, metadata={"help": "steps per episode (each applied raw, then wrapped)"})
    rounds: int = field(default=10, metadata={"help": "episodes"})
    obs_mode: Literal["state", "rgb"] = field(default="state", metadata={"help": "state or rgb"})
    image_size: int = field(default=84, metadata={"help": "camera images are image_size x image_size (rgb)"})
    render_qualities: tuple[str, ...] = field(
        default=("default", "fast"),
        metadata={"help": "rgb: the camera looks to compare on the MuJoCo suites (sim/rendering.py)"},
    )
    max_workers: int = field(default=0, metadata={"help": "subprocess scaling up to this many workers (0: cores)"})
    scaling_steps: int = field(default=200, metadata={"help": "batched steps per scaling measurement"})
    seed: int = field(default=0, metadata={"help": "base seed: episode k of env i is seeded from (seed, i, k)"})
    sim_franka_seconds: float = field(
        default=2.0,
        metadata={"help": "rgb: simulated seconds of the ROS graph's simulated Franka per look (0: skip)"},
    )
    out: str | None = field(default=None, metadata={"help": "write the table as JSON here"})


def _random_actions(spec, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = np.asarray(spec.action_low or [-1.0] * spec.action_dim, dtype=np.float32)
    high = np.asarray(spec.action_high or [1.0] * spec.action_dim, dtype=np.float32)
    return rng.uniform(low, high, size=(count, spec.action_dim)).astype(np.float32)


def measure_raw_vs_wrapper(name: str, config: BenchSimConfig, render_quality: str = "fast") -> dict:
    """Step the same simulator alternately through its own API and through ours.

    Each action is applied once with ``raw_step`` and once with ``env.step``, timed
    separately, so both totals see the same machine load at millisecond scale. Episodes of
    ``steps`` steps start with an (untimed) reset.
    """
    from sim import make_env

    env = make_env(
        name,
        num_envs=1,
        obs_mode=config.obs_mode,
        image_size=config.image_size,
        seed=config.seed,
        vectorization="sync",
        terminate_on_success=False,
        max_episode_steps=2 * config.steps + 1,
        render_quality=render_quality,
    )
    single = env.workers[0].runner.env
    actions = _random_actions(env.spec, config.steps, config.seed)
    raw_time = wrapped_time = 0.0
    clock = time.perf_counter
    env.reset(seed=config.seed)
    for action in actions[:5]:  # warm-up: first steps pay one-time costs (allocations, caches)
        single.raw_step(action)
        env.step(action[None, None, :])
    for episode in range(config.rounds):
        env.reset(seed=config.seed + episode)
        for action in actions:
            t0 = clock()
            single.raw_step(action)
            t1 = clock()
            env.step(action[None, None, :])
            t2 = clock()
            raw_time += t1 - t0
            wrapped_time += t2 - t1
    frame_ms = _camera_frame_ms(single, config.steps) if env.spec.cameras else None
    env.close()
    total = config.steps * config.rounds
    raw, wrapped = total / raw_time, total / wrapped_time
    return {
        "env": name,
        "render_quality": env.spec.render_quality if env.spec.cameras else None,
        "raw_steps_per_s": raw,
        "wrapper_steps_per_s": wrapped,
        "ratio": wrapped / raw,
        "ms_per_camera_frame": frame_ms,
    }


def _camera_frame_ms(single, frames: int) -> float:
    """Milliseconds to render one observation camera image, alone (``render``)."""
    cameras = single.spec.cameras
    single.render(cameras[0])
    start = time.perf_counter()
    for i in range(frames):
        single.render(cameras[i % len(cameras)])
    return 1e3 * (time.perf_counter() - start) / frames


def measure_scaling(
    name: str, config: BenchSimConfig, workers: list[int], render_quality: str = "fast"
) -> dict[int, float]:
    from sim import make_env

    rates = {}
    for n in workers:
        env = make_env(
            name,
            num_envs=n,
            obs_mode=config.obs_mode,
            image_size=config.image_size,
            seed=config.seed,
            vectorization="subprocess",
            terminate_on_success=False,
            max_episode_steps=100,
            render_quality=render_quality,
        )
        actions = _random_actions(env.spec, config.scaling_steps * n, config.seed).reshape(config.scaling_steps, n, -1)
        env.reset()
        for a in actions[:5]:  # warm-up
            env.step(a)
        start = time.perf_counter()
        for a in actions[5:]:
            env.step(a)
        rates[n] = (config.scaling_steps - 5) * n / (time.perf_counter() - start)
        env.close()
    return rates


def run_bench_sim(config: BenchSimConfig) -> list[dict]:
    max_workers = config.max_workers or os.cpu_count() or 1
    workers = sorted({1, *range(2, max_workers + 1)})
    rows = []
    print(
        f"raw vs wrapper: {config.rounds} episodes x {config.steps} steps, each step applied raw then wrapped "
        f"on the same simulator, obs_mode={config.obs_mode}; "
        f"subprocess columns: total env steps/s with N workers ({os.cpu_count()} cores)"
    )
    print(table_header(workers), flush=True)
    qualities = tuple(dict.fromkeys(config.render_qualities)) if config.obs_mode == "rgb" else ("fast",)
    for quality in qualities:
        render_quality(quality)  # an unknown name fails before any simulator starts
    for name in config.envs:
        for quality in qualities:
            row = measure_raw_vs_wrapper(name, config, quality)
            row["subprocess_steps_per_s"] = measure_scaling(name, config, workers, quality)
            rows.append(row)
            print(format_row(row, workers), flush=True)
            if row["render_quality"] is None:  # the suite has one look (ManiSkill): measured once
                break
        speedup = _speedup(rows, name, qualities)
        if speedup is not None:
            print(f"|   {name}: {qualities[-1]} / {qualities[0]} = {speedup:.1f}x raw steps/s | | | | | |", flush=True)
    if config.obs_mode == "rgb" and config.sim_franka_seconds > 0:
        print("\n| simulated Franka of the ROS graph | render | simulated s | wall s | real-time factor |")
        print("|---|---|---|---|---|", flush=True)
        for quality in qualities:
            row = measure_sim_franka(quality, config.sim_franka_seconds)
            rows.append(row)
            print(
                f"| {row['env']} | {quality} | {row['simulated_s']:.1f} | {row['wall_s']:.1f} | "
                f"{row['real_time_factor']:.2f} |",
                flush=True,
            )
    return rows


def measure_sim_franka(render_quality_name: str, seconds: float, camera_hz: float = 20.0) -> dict:
    """The fastest real-time factor the ROS graph's simulated Franka can keep at its rates
    (launch/params/sim_franka_lift.yaml: 100 Hz control, scene + wrist cameras at ``camera_hz``):
    simulated seconds over wall seconds, without ROS (the node adds publishing on top)."""
    from sim.franka_mujoco import SimFrankaConfig, SimulatedFranka

    config = SimFrankaConfig(render_quality=render_quality_name)
    robot = SimulatedFranka(config)
    try:
        robot.reset(0)
        hold = robot.joint_positions()
        steps = int(round(seconds * config.control_hz))
        every = max(1, int(round(config.control_hz / camera_hz)))
        for camera in config.cameras:  # the renderer is built on first use: not part of the rate
            robot.render(camera)
        start = time.perf_counter()
        for step in range(steps):
            robot.step(hold)
            if step % every == 0:
                for camera in config.cameras:
                    robot.render(camera)
        wall = time.perf_counter() - start
    finally:
        robot.close()
    return {
        "env": "ros/sim_franka (robomimic/Lift, 100 Hz control, 2 cameras at 20 Hz)",
        "render_quality": render_quality_name,
        "simulated_s": steps / config.control_hz,
        "wall_s": wall,
        "real_time_factor": steps / config.control_hz / wall,
    }


def _speedup(rows: list[dict], name: str, qualities: tuple[str, ...]) -> float | None:
    by_quality = {r["render_quality"]: r for r in rows if r["env"] == name}
    if len(qualities) < 2 or not all(q in by_quality for q in (qualities[0], qualities[-1])):
        return None
    return by_quality[qualities[-1]]["raw_steps_per_s"] / by_quality[qualities[0]]["raw_steps_per_s"]


def table_header(workers: list[int]) -> str:
    scaling = " | ".join(f"{n} proc" for n in workers)
    line = "|" + "---|" * (7 + len(workers))
    return f"| env | render | raw steps/s | wrapper steps/s | wrapper/raw | overhead | ms/camera frame | {scaling} |\n{line}"


def format_row(row: dict, workers: list[int]) -> str:
    scaling = " | ".join(f"{row['subprocess_steps_per_s'][n]:.0f}" for n in workers)
    frame = row.get("ms_per_camera_frame")
    return (
        f"| {row['env']} | {row.get('render_quality') or '-'} | {row['raw_steps_per_s']:.0f} | "
        f"{row['wrapper_steps_per_s']:.0f} | {row['ratio']:.3f} | {100 * (1 - row['ratio']):.1f}% | "
        f"{'-' if frame is None else f'{frame:.1f}'} | {scaling} |"
    )


DEFAULT_EXPERT_ENVS = (
    "robomimic/Lift",
    "robomimic/PickPlaceCan",
    "robomimic/NutAssemblySquare",
    "maniskill/PickCube-v1",
    "maniskill/PushCube-v1",
    "maniskill/StackCube-v1",
    "maniskill/PegInsertionSide-v1",
    "metaworld/pick-place-v3",
)


@dataclass
class BenchExpertsConfig:
    envs: tuple[str, ...] = field(default=DEFAULT_EXPERT_ENVS, metadata={"help": "envs whose experts to measure"})
    episodes: int = field(default=50, metadata={"help": "episodes per env"})
    num_envs: int = field(default=2, metadata={"help": "parallel simulators"})
    seed: int = field(default=0, metadata={"help": "base seed: episode k of env i is seeded from (seed, i, k)"})
    out: str | None = field(default=None, metadata={"help": "write the table as JSON here"})


def measure_expert(name: str, episodes: int, num_envs: int, seed: int) -> dict:
    """Success rate of a scripted expert over the first ``episodes`` finished episodes."""
    from sim import make_env

    finished: list[dict] = []
    env = make_env(name, num_envs=num_envs, seed=seed)
    start = time.perf_counter()
    try:
        env.reset()
        while len(finished) < episodes:
            _, _, _, _, info = env.step(env.expert_actions())
            finished += [e for e in info["episode"] if e]
    finally:
        env.close()
    finished = sorted(finished, key=lambda e: (e["index"], e["seed"]))[:episodes]
    successes = sum(e["success"] for e in finished)
    return {
        "env": name,
        "episodes": len(finished),
        "successes": successes,
        "success_rate": successes / len(finished),
        "mean_length": float(np.mean([e["length"] for e in finished])),
        "seconds": time.perf_counter() - start,
    }


def run_bench_experts(config: BenchExpertsConfig) -> list[dict]:
    print(f"scripted experts: {config.episodes} episodes each, seed {config.seed}, {config.num_envs} parallel envs")
    print("| env | success | rate | mean length | wall s |\n|---|---|---|---|---|", flush=True)
    rows = []
    for name in config.envs:
        row = measure_expert(name, config.episodes, config.num_envs, config.seed)
        rows.append(row)
        print(
            f"| {name} | {row['successes']}/{row['episodes']} | {100 * row['success_rate']:.0f}% | "
            f"{row['mean_length']:.1f} | {row['seconds']:.0f} |",
            flush=True,
        )
    return rows
