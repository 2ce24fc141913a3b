"""Shared fixtures. Heavy checks have a small real version by default and a long one with VLA_FULL=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FULL = os.environ.get("VLA_FULL") == "1"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SVT_LOG", "1")


def scale(small: int, full: int) -> int:
    """How much of a heavy check to run: ``small`` in CI, ``full`` with VLA_FULL=1."""
    return full if FULL else small


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory) -> Path:
    """A small real LeRobot dataset recorded by the scripted Lift expert (rgb, 64x64)."""
    from sim.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("datasets") / "lift"
    result = collect(CollectConfig(env="robomimic/Lift", episodes=2, out=out, num_envs=2, image_size=64))
    assert result.written == 2
    return out
