"""End-to-end evaluation of the ROS graph: simulated Franka + camera topics + policy node.

    python -m vla_ros.graph_eval --checkpoint data/runs/lift_dm1_image/checkpoints/last \
        --episodes 20 --out data/runs/ros_e2e

Starts ``sim_franka_node`` and ``policy_node`` as separate processes on a private ROS domain
(they talk over DDS, with sim time), then per episode: ``/sim/reset`` (the scene `vla eval`
would start from, same seeds), ``/vla_policy/reset`` + ``/vla_policy/enable``, and waits on
``/sim/status`` for success or the horizon. Writes results.json: success rate with a Wilson
interval, per-episode seeds and outcomes, and the node's latency and command-rate diagnostics.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path



@dataclass
class GraphEvalConfig:
    checkpoint: str
    out: str = "data/runs/ros_e2e"
    episodes: int = 20
    policy_params: str = "launch/params/policy_sim_lift.yaml"
    sim_params: str = "launch/params/sim_franka_lift.yaml"
    seed: int = 1000  # `vla eval`'s default episode seeds
    horizon_s: float = 20.0  # RoboMimic Lift: 400 steps at 20 Hz
    real_time_factor: float = 0.5
    image_size: int = 0  # 0: the checkpoint's
    domain_id: int = -1  # -1: derived from the process id
    policy_overrides: list[str] = field(default_factory=list)  # name:=value
    startup_timeout_s: float = 120.0


def _ros_args(params_file: str, overrides: list[str]) -> list[str]:
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", str(params_file)]
    for item in overrides:
        args += ["-p", item]
    return args


def start_node(module: str, args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


class Harness:
    """The evaluator's own rclpy node: services, /sim/status and /diagnostics."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node("vla_graph_eval")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.Trigger = Trigger
        self.status: dict = {}
        self.diagnostics: dict[str, str] = {}
        self.events: list[dict] = []
        self.node.create_subscription(String, "/sim/status", lambda m: setattr(self, "status", json.loads(m.data)), 10)
        self.node.create_subscription(String, "/vla/policy_events", lambda m: self.events.append(json.loads(m.data)), 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.clients = {name: self.node.create_client(Trigger, name)
                        for name in ("/sim/reset", "/vla_policy/reset", "/vla_policy/enable")}

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == "vla_policy":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def wait_ready(self, timeout_s: float, procs: dict[str, subprocess.Popen]) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up (see its log)")
            if all(c.service_is_ready() for c in self.clients.values()) and self.status:
                return
            self.spin_for(0.2)
        missing = [n for n, c in self.clients.items() if not c.service_is_ready()]
        raise TimeoutError(f"graph not ready after {timeout_s:.0f} s; missing services {missing}, status seen: {bool(self.status)}")

    def call(self, service: str, timeout_s: float = 10.0):
        future = self.clients[service].call_async(self.Trigger.Request())
        end = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > end:
                raise TimeoutError(f"{service} did not answer in {timeout_s} s")
            self.executor.spin_once(timeout_sec=0.05)
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def run_episode(h: Harness, horizon_s: float) -> dict:
    h.call("/vla_policy/reset")
    reply = json.loads(h.call("/sim/reset").message)
    episode = reply["episode"]
    deadline = time.monotonic() + 30.0
    while h.status.get("episode") != episode or h.status.get("steps", 0) < 5:  # fresh frames after the reset
        if time.monotonic() > deadline:
            raise TimeoutError("the simulator did not report the new episode")
        h.spin_for(0.05)
    start_sim = h.status["sim_time"]
    enabled = h.call("/vla_policy/enable")
    while not enabled.success:
        if time.monotonic() > deadline:
            raise RuntimeError(f"policy node refused to enable: {enabled.message}")
        h.spin_for(0.1)
        enabled = h.call("/vla_policy/enable")
    while True:
        h.spin_for(0.05)
        s = h.status
        elapsed = s["sim_time"] - start_sim
        if s.get("episode") == episode and (s["success"] or elapsed >= horizon_s):
            break
        if time.monotonic() > deadline + 10 * horizon_s:
            raise TimeoutError("episode did not finish (simulator stalled?)")
    h.call("/vla_policy/reset")
    return {"episode": episode, "episode_seed": reply["seed"], "success": bool(s["success"]),
            "sim_seconds": round(elapsed, 3), "length": int(round(elapsed * 20))}


def graph_eval(config: GraphEvalConfig) -> dict:
    from vla.evaluation.evaluate import wilson_interval
    from vla.policies.checkpoint import load_policy

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    policy_config = load_policy(config.checkpoint).config
    image_size = config.image_size or (policy_config.image_size or (84, 84))[0]
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(config.domain_id if config.domain_id >= 0 else 1 + os.getpid() % 200)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    sim = start_node("vla_ros.sim_franka_node", _ros_args(config.sim_params, [
        f"seed:={config.seed}", f"image_size:={image_size}", f"real_time_factor:={config.real_time_factor}"]),
        env, out / "logs" / "sim_franka.log")
    policy = start_node("vla_ros.policy_node", _ros_args(config.policy_params, [
        f"checkpoint:={config.checkpoint}", *config.policy_overrides]), env, out / "logs" / "policy.log")
    procs = {"sim_franka_node": sim, "policy_node": policy}
    h = Harness()
    episodes: list[dict] = []
    try:
        h.wait_ready(config.startup_timeout_s, procs)
        for _ in range(config.episodes):
            episodes.append(run_episode(h, config.horizon_s))
            done = sum(e["success"] for e in episodes)
            print(f"episode {len(episodes)}/{config.episodes}: success={episodes[-1]['success']} "
                  f"({done}/{len(episodes)})", flush=True)
        h.spin_for(1.5)  # one more diagnostics message with every episode in it
    finally:
        diagnostics, events = dict(h.diagnostics), list(h.events)
        h.close()
        codes = {name: stop_node(p) for name, p in procs.items()}
    n, k = len(episodes), sum(e["success"] for e in episodes)
    results = {
        "graph": "sim_franka_node + policy_node over DDS (separate processes, sim time)",
        "checkpoint": config.checkpoint,
        "episodes": n,
        "success_rate": k / max(n, 1),
        "success_ci95": list(wilson_interval(k, n)),
        "per_episode": episodes,
        "policy_diagnostics": diagnostics,
        "safety_events_seen": len(events),
        "exit_codes": codes,
        "config": asdict(config),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = GraphEvalConfig(checkpoint="")
    parser.add_argument("--checkpoint", required=True)
    for name in ("out", "episodes", "policy_params", "sim_params", "seed", "horizon_s", "real_time_factor",
                 "image_size", "domain_id"):
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--policy-override", action="append", default=[], dest="policy_overrides",
                        help="policy node parameter, name:=value (repeatable)")
    args = parser.parse_args(argv)
    results = graph_eval(GraphEvalConfig(**vars(args)))
    summary = {k: results[k] for k in ("episodes", "success_rate", "success_ci95")}
    summary["latency"] = {k: v for k, v in results["policy_diagnostics"].items() if k.endswith(("p50", "p99")) or k == "command_rate_hz"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
