"""`vla bench taco`: latency per chunk of TACO selection at batch 1, N candidates with the
observation encoded once (prefix keys/values shared) against the naive way (the observation
repeated N times in a batch and encoded N times, as the reference's released script does),
side by side in interleaved rounds.

The verifier is the checkpoint's own (`vla verifier fit`); without one, an untrained CFN of
the default size stands in (its cost, not its scores, is what is timed).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vla.bench.policy_latency import example_observation
from vla.threads import set_thread_budget


@dataclass
class BenchTacoConfig:
    policy: Path = field(default=Path("data/runs/train/checkpoints/last"), metadata={"help": "checkpoint"})
    num_samples: tuple[int, ...] = field(default=(1, 4, 16, 50), metadata={"help": "N values"})
    warmup: int = field(default=2, metadata={"help": "untimed calls per entry first"})
    rounds: int = field(default=10, metadata={"help": "interleaved rounds (one timed call per entry each)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (the eval/server role's budget)"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def _verifier(checkpoint: Path, feature_dim: int):
    from vla.verifiers.cfn import CFNConfig, CoinFlippingNetwork
    from vla.verifiers.taco import TacoVerifier, load_taco

    try:
        return load_taco(checkpoint), "fitted"
    except FileNotFoundError:
        return TacoVerifier(CoinFlippingNetwork(CFNConfig(feature_dim=feature_dim)), "untrained"), "untrained"


def run_bench_taco(config: BenchTacoConfig) -> list[dict]:
    from vla.policies.checkpoint import load_policy
    from vla.verifiers.taco import TacoPolicy, noise_bank

    set_thread_budget("eval", config.threads)
    policy = load_policy(config.policy)
    verifier, kind = _verifier(Path(config.policy).resolve(), policy.config.d_model)
    obs = example_observation(policy)

    def naive(n: int):
        bank = noise_bank(n, policy.config.chunk_size, policy.config.action_dim)
        repeated = {k: (v * n if isinstance(v, list) else v.repeat(n, 0)) for k, v in obs.items()}

        def call():
            chunks, features = policy.sample_action_chunks(repeated, 1, noise=bank[:, None], return_features=True)
            choice, _ = verifier.select(features.reshape(1, n, -1))
            return chunks[choice.item(), 0]

        return call

    entries = {}
    for n in config.num_samples:
        taco = TacoPolicy(policy, verifier, n)
        entries[(n, "shared")] = lambda taco=taco: taco.predict_action_chunk(obs)
        entries[(n, "naive")] = naive(n)
    with torch.no_grad():
        for call in entries.values():
            for _ in range(config.warmup):
                call()
        times: dict[tuple[int, str], list[float]] = {key: [] for key in entries}
        for _ in range(config.rounds):
            for key, call in entries.items():
                start = time.perf_counter()
                call()
                times[key].append(1e3 * (time.perf_counter() - start))
    base = statistics.median(times[(min(config.num_samples), "shared")])
    rows = []
    print(
        f"TACO latency per chunk at batch 1, {policy.config.head}, NFE {policy.config.inference_steps}, "
        f"{config.threads} thread(s), verifier {kind}; median of {config.rounds} interleaved rounds"
    )
    print("| N | shared encoding ms | naive ms | shared / N=1 | naive / shared |\n|---|---|---|---|---|")
    for n in config.num_samples:
        shared, naive_ms = statistics.median(times[(n, "shared")]), statistics.median(times[(n, "naive")])
        rows.append({"num_samples": n, "shared_ms": shared, "naive_ms": naive_ms, "shared_vs_n1": shared / base})
        print(f"| {n} | {shared:.1f} | {naive_ms:.1f} | {shared / base:.2f}x | {naive_ms / shared:.2f}x |", flush=True)
    return rows
