"""Dynamic batching for `vla serve`: a bounded FIFO of decoded requests and one inference
worker that runs what is waiting as one forward pass.

Why: a policy forward pass on a small batch costs about as much as on one observation (the
time goes to per-layer overheads), so serving N waiting clients in one pass instead of N
passes divides their wait by up to N. Each connection has at most one request queued (its
handler awaits the reply before reading the next message) and the worker takes requests in
arrival order, so no client can starve another. A request whose connection closed while it
waited is cancelled and skipped, not computed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vla.serving")


class QueueFull(Exception):
    """The request queue is at capacity; the message says how many requests wait."""


@dataclass
class Job:
    """One decoded request waiting for inference; ``future`` gets the result or the error."""

    request: Any
    rows: int  # observations in the request (its batch size; 1 when unbatched)
    group: tuple  # requests with the same group can share a forward pass
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


RunGroup = Callable[[Sequence[Job]], list[Any]]  # jobs of one group -> one result per job, in order


class BatchingWorker:
    """A bounded queue and the one thread that runs it in batches of at most ``max_batch_size`` rows.

    The worker waits up to ``window_s`` for more requests while fewer are in hand than the
    previous pass served (and than there are open connections, ``senders()``): under load the
    clients just answered are about to send again, and one pass for all of them beats two for
    halves; a lone client, even beside idle connections, never waits.
    """

    def __init__(
        self,
        run_group: RunGroup,
        max_batch_size: int,
        window_s: float,
        capacity: int,
        senders: Callable[[], int] = lambda: 1,
    ):
        self._run_group, self.max_batch_size, self.window_s = run_group, max_batch_size, window_s
        self.capacity, self._senders = capacity, senders
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.skipped = 0  # requests of closed connections that were never computed
        self._last_pass_jobs = 1  # requests in the previous pass: how many to expect back
        self._thread = threading.Thread(target=self._work, name="vla-infer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side (event loop)
    def submit(self, job: Job) -> Future:
        """Queue ``job``; raises QueueFull at capacity (after dropping cancelled jobs)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the inference worker has stopped")
            if len(self._jobs) >= self.capacity:
                self._jobs = deque(j for j in self._jobs if not j.future.cancelled())
            if len(self._jobs) >= self.capacity:
                raise QueueFull(f"queue full, {len(self._jobs)} requests waiting")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def close(self) -> None:
        """Stop the worker; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if len(live) < len(jobs):
                self.skipped += len(jobs) - len(live)
                log.debug("skipped %d request(s) of closed connections", len(jobs) - len(live))
            for group in _groups(live):
                self._run(group)

    def _take_batch(self) -> list[Job] | None:
        """The jobs of the next forward pass, oldest first; None once closed."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.window_s
            while not self._batch_is_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if self._closed:
                    return None
            return self._pop_up_to_max_rows()

    def _batch_is_ready(self) -> bool:
        rows = sum(job.rows for job in self._jobs)
        expected = min(self._senders(), self._last_pass_jobs)
        return rows >= self.max_batch_size or len(self._jobs) >= expected

    def _pop_up_to_max_rows(self) -> list[Job]:
        jobs = [self._jobs.popleft()]  # the oldest always goes, even when larger than max_batch_size
        rows = jobs[0].rows
        while self._jobs and rows + self._jobs[0].rows <= self.max_batch_size:
            rows += self._jobs[0].rows
            jobs.append(self._jobs.popleft())
        self._last_pass_jobs = len(jobs)
        return jobs

    def _run(self, jobs: list[Job]) -> None:
        """One forward pass for ``jobs``; if it fails, each job alone, so one bad request fails only itself."""
        try:
            results = self._run_group(jobs)
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            log.debug("a batch of %d failed (%s); running its requests one by one", len(jobs), type(err).__name__)
            for job in jobs:
                self._run([job])
            return
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs split by compatibility, groups in order of their first job (FIFO across groups)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return list(groups.values())
