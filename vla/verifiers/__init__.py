"""Test-time verifiers that re-rank sampled action chunks. ``VERIFIERS`` maps a name to a
function ``(checkpoint, policy, num_samples) -> policy-like`` with ``predict_action_chunk`` and
``select_action``."""

from __future__ import annotations

from pathlib import Path

from vla.registry import Registry


def _taco(checkpoint: Path, policy, num_samples: int):
    from vla.verifiers.taco import TacoPolicy, load_taco

    return TacoPolicy(policy, load_taco(checkpoint), num_samples)


VERIFIERS: Registry = Registry("verifier")
VERIFIERS.add("taco", _taco)
