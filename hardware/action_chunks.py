"""Executing timestamped action chunks in closed loop (inference thread in, control timer out).

A policy returns H actions for the observation taken at `obs_stamp`; action i is meant for the
control tick at time t_i = obs_stamp + i * control_dt and stays in force for one tick, i.e. the
tick at `now` executes action floor((now - obs_stamp) / control_dt) (never one before its time).
Inference takes time, so when a chunk arrives the actions whose tick is already over are dropped
(diffusion_policy's eval_real_robot does the same with its latency margin).

Re-inference rule: a new chunk is wanted once the newest chunk has executed its first
`n_action_steps` (k) actions, i.e. when at most H - k of its actions are still to come after the
current tick, and no request is already in flight (one at a time: `mark_requested()` sets it,
`add_chunk()` or `cancel_request()` clears it).

Temporal ensembling (ACT): every chunk that covers the current tick contributes, weighted
w_i = exp(-m * i) with i = 0 the oldest chunk, so older predictions weigh most (as in ACT).
Without it the newest chunk covering the tick wins.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("hardware.action_chunks")

_EPS = 1e-9  # ticks computed as now = obs_stamp + i * dt must land on i, not i - 1


@dataclass(frozen=True)
class ChunkSchedulerConfig:
    control_dt: float = field(default=0.05, metadata={"help": "seconds between control ticks"})
    n_action_steps: int = field(default=8, metadata={"help": "k: actions executed from each chunk before the next"})
    temporal_ensemble: float | None = field(default=None, metadata={"help": "ACT weight exp(-m*i); None: off"})
    max_latency_s: float = field(default=0.5, metadata={"help": "chunks older than this at arrival are refused"})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_dt) and self.control_dt > 0):
            raise ValueError(f"control_dt must be a positive number, got {self.control_dt}")
        if not isinstance(self.n_action_steps, int) or self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be an integer >= 1, got {self.n_action_steps!r}")
        m = self.temporal_ensemble
        if m is not None and not (math.isfinite(m) and m >= 0):
            raise ValueError(f"temporal_ensemble must be None or a finite m >= 0, got {m}")
        if not (math.isfinite(self.max_latency_s) and self.max_latency_s > 0):
            raise ValueError(f"max_latency_s must be a positive number, got {self.max_latency_s}")


@dataclass
class _Chunk:
    obs_stamp: float
    actions: np.ndarray  # (H, A)
    seq: int  # arrival order, breaks ties between equal stamps
    first: int = 0  # actions before this index were already past on arrival (dropped)


def ensemble_weights(n: int, m: float) -> np.ndarray:
    """ACT's normalised weights exp(-m * i) for n overlapping chunks, i = 0 the oldest."""
    w = np.exp(-m * np.arange(n, dtype=np.float64))
    return w / w.sum()


class ChunkScheduler:
    """Holds the chunks in play and answers "which action now?"; thread-safe."""

    def __init__(self, config: ChunkSchedulerConfig | None = None):
        self.config = config or ChunkSchedulerConfig()
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []
        self._action_dim: int | None = None
        self._in_flight = False
        self._seq = 0
        self._counters = {"chunks_added": 0, "dropped_late": 0, "executed": 0, "stale_chunks": 0}

    # ---- helpers -----------------------------------------------------------------------------------

    def _tick(self, chunk: _Chunk, now: float) -> int:
        return math.floor((now - chunk.obs_stamp) / self.config.control_dt + _EPS)

    def _prune(self, now: float) -> None:
        self._chunks = [c for c in self._chunks if self._tick(c, now) < c.actions.shape[0]]

    def _newest(self) -> _Chunk | None:
        return max(self._chunks, key=lambda c: (c.obs_stamp, c.seq), default=None)

    # ---- inference side ------------------------------------------------------------------------------

    def add_chunk(self, actions: np.ndarray, obs_stamp: float, now: float) -> bool:
        """Accept a chunk predicted from the observation at `obs_stamp`, arriving at `now`.

        Returns False (and counts it) when the chunk is stale (older than max_latency_s) or every
        action's tick is already over. Bad shapes / NaN / a stamp in the future raise ValueError.
        """
        a = np.array(actions, dtype=np.float64)  # a copy: the caller may reuse its buffer
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"actions must be (H, A) with H, A >= 1, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain NaN or inf")
        if not (math.isfinite(obs_stamp) and math.isfinite(now)):
            raise ValueError(f"obs_stamp and now must be finite, got {obs_stamp}, {now}")
        k = self.config.n_action_steps
        if a.shape[0] < k:
            raise ValueError(f"chunk has H={a.shape[0]} actions but n_action_steps={k}")
        if obs_stamp > now + self.config.control_dt:
            raise ValueError(f"obs_stamp {obs_stamp} is after now {now}: are two clocks mixed?")
        with self._lock:
            if self._action_dim is not None and a.shape[1] != self._action_dim:
                raise ValueError(f"action dim {a.shape[1]} differs from earlier chunks ({self._action_dim})")
            self._in_flight = False
            latency = now - obs_stamp
            if latency > self.config.max_latency_s:
                self._counters["stale_chunks"] += 1
                log.warning(
                    "stale chunk refused: latency %.3f s > max_latency_s %.3f s", latency, self.config.max_latency_s
                )
                return False
            self._action_dim = a.shape[1]
            chunk = _Chunk(float(obs_stamp), a, self._seq)
            self._seq += 1
            passed = min(max(self._tick(chunk, now), 0), a.shape[0])
            self._counters["dropped_late"] += passed
            if passed == a.shape[0]:
                log.warning("chunk dropped: all %d actions are past (latency %.3f s)", passed, latency)
                return False
            chunk.first = passed
            self._chunks.append(chunk)
            self._counters["chunks_added"] += 1
            self._prune(now)
            return True

    def mark_requested(self) -> None:
        """Note that an inference request was sent; a second one before its chunk arrives is an error."""
        with self._lock:
            if self._in_flight:
                raise RuntimeError("an inference request is already in flight")
            self._in_flight = True

    def cancel_request(self) -> None:
        """The request failed (no chunk will come): allow a new one."""
        with self._lock:
            self._in_flight = False

    # ---- control side --------------------------------------------------------------------------------

    def action_at(self, now: float) -> np.ndarray | None:
        """The action for the control tick at `now`, or None when no chunk covers it (then hold)."""
        with self._lock:
            self._prune(now)
            covering = []
            for c in sorted(self._chunks, key=lambda c: (c.obs_stamp, c.seq)):  # oldest first
                i = self._tick(c, now)
                if c.first <= i < c.actions.shape[0]:
                    covering.append(c.actions[i])
            if not covering:
                return None
            m = self.config.temporal_ensemble
            if m is None:
                action = covering[-1].copy()
            else:
                action = ensemble_weights(len(covering), m) @ np.stack(covering)
            self._counters["executed"] += 1
            return action

    def needs_inference(self, now: float) -> bool:
        """True when a new chunk should be requested now (see the module docstring for the rule)."""
        with self._lock:
            if self._in_flight:
                return False
            newest = self._newest()
            if newest is None:
                return True
            horizon = newest.actions.shape[0]
            still_to_come = horizon - 1 - self._tick(newest, now)
            return still_to_come <= horizon - self.config.n_action_steps

    def reset(self) -> None:
        """Forget every chunk and any request in flight (after a hold or a re-enable)."""
        with self._lock:
            self._chunks.clear()
            self._in_flight = False

    # ---- diagnostics -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)
