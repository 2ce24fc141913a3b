"""Latency of the policy node on this machine, as on a robot PC: no simulator sharing the CPU.

    python -m vla_ros.latency_bench --checkpoint data/runs/lift_dm1_image_joint/checkpoints/last \
        --action-space joint_position --robot panda --seconds 30

Starts ``vla_ros.policy_node`` in its own process (its production defaults: staleness limits,
20 Hz control, one inference thread) on a private ROS domain, feeds it what a Franka and its
RealSense cameras publish (``vla_ros.fake_franka``: /joint_states at 100 Hz, rgb8 images at
30 Hz, the checkpoint's image size), enables it, and after ``--seconds`` reads the node's own
/diagnostics: per-stage latency p50/p99 (newest frame -> trajectory published excluding
inference, observation assembly, inference, chunk -> trajectory) and the trajectories per
second the fake controller received. Prints a Markdown table; ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = (
    "joint_state_age_ms",
    "image_age_ms",
    "frame_to_trajectory_excl_inference_ms",
    "observation_ms",
    "inference_ms",
    "chunk_to_trajectory_ms",
)


def camera_topics(cameras: list[str]) -> dict[str, str]:
    """RealSense topic names: the node's defaults for scene/wrist, /<name>/<name>/color/image_raw otherwise."""
    from vla_ros.policy_node import DEFAULT_CAMERAS

    defaults = dict(entry.split("=", 1) for entry in DEFAULT_CAMERAS)
    return {c: defaults.get(c, f"/{c}/{c}/color/image_raw") for c in cameras}


def run(
    checkpoint: str,
    seconds: float,
    action_space: str,
    robot: str,
    state_layout: str,
    instruction: str,
    extra: list[str],
) -> dict:
    from vla import keys
    from vla.policies.checkpoint import load_policy
    from vla_ros.fake_franka import FakeFranka
    from vla_ros.ros_util import stop_process_group

    config = load_policy(checkpoint).config
    shapes = {keys.camera_of(f): tuple(config.feature_shapes[f]) for f in config.image_features}
    topics = camera_topics(sorted(shapes))
    domain = 150 + os.getpid() % 80
    params = {
        "checkpoint": checkpoint,
        "robot": robot,
        "arm_id": "fr3",
        "action_space": action_space,
        "state_layout": state_layout,
        "gripper": "none",
        "cameras": json.dumps([f"{c}={t}" for c, t in topics.items()]),
    }
    if config.use_language:
        params["instruction"] = json.dumps(instruction)
    args = [a for name, value in params.items() for a in ("-p", f"{name}:={value}")]
    for override in extra:
        args += ["-p", override]
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    node = subprocess.Popen(
        [sys.executable, "-m", "vla_ros.policy_node", "--ros-args", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    robot_side = FakeFranka(domain, cameras={topics[c]: shape for c, shape in shapes.items()})
    try:
        robot_side.wait_for(lambda: robot_side.diagnostics or node.poll() is not None, 120, "the node's diagnostics")
        if node.poll() is not None:
            raise RuntimeError(f"the policy node exited with {node.returncode}:\n{node.stdout.read()[-3000:]}")
        robot_side.wait_for(lambda: robot_side.call("enable").success, 20, "the node to enable")
        start_count, t0 = len(robot_side.trajectories), time.monotonic()
        print(f"enabled; measuring for {seconds:.0f} s ...", file=sys.stderr, flush=True)
        time.sleep(seconds)
        count, elapsed = len(robot_side.trajectories) - start_count, time.monotonic() - t0
        time.sleep(1.2)  # one more diagnostics message covering the whole window
        diagnostics = dict(robot_side.diagnostics)
    finally:
        robot_side.close()
        stop_process_group(node)
    if diagnostics.get("latched"):
        raise RuntimeError(
            f"the node latched during the run ({diagnostics['latched']}): the numbers would not be "
            "those of a running loop"
        )
    return {
        "checkpoint": checkpoint,
        "action_space": action_space,
        "robot": robot,
        "seconds": round(elapsed, 2),
        "cameras": {c: list(s) for c, s in shapes.items()},
        "trajectories_per_s": round(count / elapsed, 2),
        "latency_ms": {
            s: {"p50": float(diagnostics[f"{s}.p50"]), "p99": float(diagnostics[f"{s}.p99"])}
            for s in STAGES
            if f"{s}.p50" in diagnostics
        },
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def table(result: dict) -> str:
    lines = ["| stage (ms) | p50 | p99 |", "|---|---|---|"]
    for stage, v in result["latency_ms"].items():
        lines.append(f"| {stage} | {v['p50']:.2f} | {v['p99']:.2f} |")
    lines.append(
        f"\ntrajectories per second: {result['trajectories_per_s']} over {result['seconds']} s "
        f"({result['action_space']}, {result['robot']}; load average {result['load_average'][0]:.2f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--action-space", default="joint_position", help="joint_position or ee_delta")
    parser.add_argument("--robot", default="fr3", help="joint-limit table: fr3 or panda")
    parser.add_argument("--state-layout", default="robomimic_panda")
    parser.add_argument("--instruction", default="lift the red cube off the table")
    parser.add_argument(
        "-p",
        dest="extra",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="another policy-node parameter (repeatable)",
    )
    parser.add_argument("--out", default="", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(
        args.checkpoint, args.seconds, args.action_space, args.robot, args.state_layout, args.instruction, args.extra
    )
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
