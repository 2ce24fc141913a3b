"""Seeds derived from names: the same parts give the same seed on any machine, whatever ran
before, so episodes, RL iterations and evaluations repeat and resume exactly."""

from __future__ import annotations

import hashlib


def derived_seed(*parts: object) -> int:
    """A 31-bit seed from ``"/".join(parts)`` (blake2b), e.g. (base seed, env, episode)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF
