"""`vla bench serve`: `vla serve` latency with one client and with many at once, batching on
and off, side by side in one run.

Each server is a real `vla serve` subprocess (its own interpreter: the clients do not share
its GIL) on a loopback port; the clients are asyncio websocket connections in this process
that each send a request, wait for the reply and send the next (a robot's loop without the
robot). A row per server setting and client count: p50/p99 latency per request, requests/s,
the mean forward-pass batch the server reported, and p50 relative to one client alone on the
same server. ``--max-batch-sizes 1`` is one request per forward pass (the server before
dynamic batching).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla.observation import ObservationSpec
from vla.serving.auth import API_KEY_ENV
from vla.serving.wire import pack, unpack


@dataclass
class BenchServeConfig:
    policy: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint directory (default: a random-weight policy of the serving tests' size: "
            "5-D state, one 16x16 camera, d_model 32, 10-step flow matching)"
        },
    )
    clients: int = field(default=50, metadata={"help": "concurrent clients in the load phase"})
    requests: int = field(default=20, metadata={"help": "timed requests per client in the load phase"})
    single_requests: int = field(default=200, metadata={"help": "timed requests of the lone client"})
    warmup: int = field(default=3, metadata={"help": "untimed requests per client first"})
    rounds: int = field(
        default=2, metadata={"help": "alternating rounds of the lone-client and load phases (noise hits both alike)"}
    )
    max_batch_sizes: tuple[int, ...] = field(
        default=(1, 64), metadata={"help": "server --max-batch-size values (1: one request per forward pass)"}
    )
    batch_window_ms: float = field(default=15.0, metadata={"help": "server --batch-window-ms"})
    server_threads: int = field(default=1, metadata={"help": "torch CPU threads of the server (its thread budget)"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def tiny_checkpoint(directory: Path) -> Path:
    """A random-weight policy of the serving tests' size (5-D state, one 16x16 camera, chunk 4 x 3),
    saved as a checkpoint; the serving tests' fixture uses it too."""
    import torch

    from vla import keys
    from vla.policies.checkpoint import save_policy
    from vla.policies.config import PolicyConfig
    from vla.policies.flow_policy import FlowPolicy
    from vla.policies.normalize import compute_stats

    scene = keys.image_key("scene")
    config = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        image_features=(scene,),
        feature_shapes={keys.OBS_STATE: [5], scene: [16, 16, 3]},
        action_dim=3,
        chunk_size=4,
        n_action_steps=2,
        d_model=32,
        n_heads=2,
        n_expert_layers=2,
        head="flow_matching",
        image_tokens=4,
    )
    torch.manual_seed(0)
    policy = FlowPolicy(config)
    rng = torch.Generator().manual_seed(1)
    stats = {
        keys.OBS_STATE: compute_stats(torch.randn(50, 5, generator=rng)),
        keys.ACTION: compute_stats(torch.rand(50, 3, generator=rng) * 4 - 2),
    }
    policy.set_normalization(stats)
    return save_policy(policy, stats, directory / "bench_policy")


class ServeProcess:
    """`vla serve` on a free loopback port; stopped with Ctrl-C like a user would."""

    def __init__(self, policy: str, max_batch_size: int, config: BenchServeConfig, log_path: Path):
        cmd = [
            sys.executable,
            "-m",
            "vla.cli.main",
            "serve",
            "--policy",
            policy,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-batch-size",
            str(max_batch_size),
            "--batch-window-ms",
            str(config.batch_window_ms),
            "--queue-size",
            str(max(64, 2 * config.clients)),
            "--threads",
            str(config.server_threads),
        ]
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.port = self._read_port(log_path)

    def _read_port(self, log_path: Path) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline, line = time.monotonic() + 120, ""
        while "listening on" not in line:
            if self.proc.poll() is not None or not selector.select(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise RuntimeError(f"vla serve did not start; its log:\n{log_path.read_text()}")
            line = self.proc.stdout.readline()
        return int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


async def _client(port: int, frame: bytes, warmup: int, n: int, start: asyncio.Event, ready: list) -> list:
    """(latency s, server batch size) of ``n`` requests sent one after another, after ``start``."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, proxy=None) as ws:
        await ws.recv()  # metadata
        for _ in range(warmup):
            await ws.send(frame)
            await ws.recv()
        ready.append(True)
        await start.wait()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await ws.send(frame)
            reply = await ws.recv()
            latency = time.perf_counter() - t0
            if not isinstance(reply, bytes):
                raise RuntimeError(f"the server refused a benchmark request: {reply}")
            samples.append((latency, unpack(reply)["server_timing"]["batch_size"]))
        return samples


async def _load(port: int, frame: bytes, clients: int, warmup: int, n: int) -> tuple[list, float]:
    """All clients connect and warm up, then run together; (samples, wall seconds of the timed part)."""
    start, ready = asyncio.Event(), []
    tasks = [asyncio.create_task(_client(port, frame, warmup, n, start, ready)) for _ in range(clients)]
    while len(ready) < clients:
        if any(t.done() for t in tasks):  # a client failed before the start: report its error
            await asyncio.gather(*tasks)
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks)
    return [s for samples in results for s in samples], time.perf_counter() - t0


def _request_frame(port: int) -> bytes:
    """A neutral observation with the server's announced shapes (no noise: sampled, as a robot sends)."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, proxy=None) as ws:
        spec = ObservationSpec.from_metadata(unpack(ws.recv(timeout=30)))
    obs = spec.example(image_value=128, instruction="lift the cube")
    rng = np.random.default_rng(0)
    for key, dim in spec.vectors.items():
        obs[key] = rng.normal(size=dim).astype(np.float32)
    return pack(obs)


def _row(max_batch: int, clients: int, samples: list, wall_s: float) -> dict:
    ms = np.asarray([s[0] for s in samples]) * 1e3
    return {
        "max_batch_size": max_batch,
        "clients": clients,
        "requests": len(samples),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": len(samples) / wall_s,
        "mean_batch": float(np.mean([s[1] for s in samples])),
    }


def _pooled(a: tuple[list, float], b: tuple[list, float]) -> tuple[list, float]:
    """Samples and timed wall seconds of two runs together."""
    return a[0] + b[0], a[1] + b[1]


def _measure(policy: str, max_batch: int, config: BenchServeConfig, log_dir: Path) -> list[dict]:
    """One server: the lone client, then all clients at once."""
    server = ServeProcess(policy, max_batch, config, log_dir / f"serve_batch{max_batch}.log")
    single: tuple[list, float] = ([], 0.0)
    load: tuple[list, float] = ([], 0.0)
    try:
        frame = _request_frame(server.port)
        for _ in range(config.rounds):
            single = _pooled(single, asyncio.run(_load(server.port, frame, 1, config.warmup, config.single_requests)))
            load = _pooled(load, asyncio.run(_load(server.port, frame, config.clients, config.warmup, config.requests)))
    finally:
        server.stop()
    rows = [_row(max_batch, 1, *single), _row(max_batch, config.clients, *load)]
    for row in rows:
        row["p50_vs_single"] = row["p50_ms"] / rows[0]["p50_ms"]
    return rows


def run_bench_serve(config: BenchServeConfig) -> list[dict]:
    if min(config.clients, config.requests, config.single_requests, config.rounds) < 1:
        raise ValueError("clients, requests, single_requests and rounds must be at least 1")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vla_bench_serve_") as tmp:
        policy = config.policy or str(tiny_checkpoint(Path(tmp)))
        rows = [row for m in config.max_batch_sizes for row in _measure(policy, m, config, Path(tmp))]
    print(
        f"vla serve on 127.0.0.1, {config.server_threads} torch thread(s), batch window {config.batch_window_ms} ms; "
        f"{config.rounds} rounds of: lone client x {config.single_requests} requests, then {config.clients} "
        f"concurrent clients x {config.requests}; {os.cpu_count()} cores, load average {load_before:.2f} before; "
        "p50 relative to the lone client on the same server"
    )
    print(
        "| max batch | clients | p50 ms | p99 ms | req/s | mean batch | p50 vs 1 client |\n|---|---|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['max_batch_size']} | {row['clients']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['throughput_rps']:.0f} | {row['mean_batch']:.1f} | {row['p50_vs_single']:.2f}x |"
        )
    for row in rows:
        row["load_average_before"] = load_before
    return rows
