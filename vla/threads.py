"""CPU thread budgets per process role.

Torch sizes its intra-op pool to every core by default, and its OpenMP workers spin while they
wait for work. Two such processes on one small machine (a trainer and an evaluation, a learner
and its env workers) then take turns spinning on each other's cores, and throughput collapses
(measured on 2 cores: training fell from ~15 to 0.3-2 steps/s beside one other torch process).
Every process role therefore asks for its budget here, once, at start:

* ``trainer`` / ``learner``: every core by default (it is the main work of its machine);
* ``eval``, ``server``, ``node``: one thread by default (small batches; the simulators, DDS
  and the control loop need the other cores);
* ``env_worker``: one thread (a simulator process; its parent owns the policy).

``VLA_THREADS_<ROLE>`` (e.g. ``VLA_THREADS_TRAINER=1``) overrides a role's default; an explicit
``threads`` argument overrides both. The set-up also exports ``OMP_WAIT_POLICY=PASSIVE`` so an
idle worker sleeps instead of spinning. That is what keeps a trainer going beside an evaluation
(``vla bench threads``, 2 cores: 8.2 of 9.5 steps/s kept; spinning workers with the same thread
counts fell to 0.87); it costs a trainer alone about a quarter of its speed, so a machine that
only trains can export ``OMP_WAIT_POLICY=ACTIVE``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ROLE_DEFAULTS: dict[str, int | None] = {  # None: every core
    "trainer": None,
    "learner": None,
    "eval": 1,
    "server": 1,
    "node": 1,
    "env_worker": 1,
    "recorder": 1,
    "bench": None,
}
_applied: dict[str, int] = {}


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_budget(role: str, threads: int = 0) -> int:
    """The number of intra-op threads ``role`` should use: ``threads`` if given (> 0), else the
    role's environment override, else its default."""
    if role not in ROLE_DEFAULTS:
        raise ValueError(f"unknown process role {role!r}; known: {', '.join(sorted(ROLE_DEFAULTS))}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the role's default), got {threads}")
    if threads:
        return threads
    override = os.environ.get(f"VLA_THREADS_{role.upper()}")
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"VLA_THREADS_{role.upper()} must be a positive integer, got {override!r}")
        return int(override)
    default = ROLE_DEFAULTS[role]
    return cpu_count() if default is None else min(default, cpu_count())


def set_thread_budget(role: str, threads: int = 0) -> int:
    """Apply ``role``'s budget to torch in this process (intra-op threads; one inter-op thread)
    and return it. Child processes of another role (env workers) set their own."""
    import torch

    n = thread_budget(role, threads)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)  # only allowed before the first parallel op
    except RuntimeError:
        pass
    if _applied.get(role) != n:
        log.info("%s: %d CPU thread(s) of %d cores", role, n, cpu_count())
    _applied[role] = n
    return n
