"""Franka joint limits (franka_description joint_limits.yaml, libfranka rate_limiting.h).

One table per robot so the safety layer, the simulator and the tests share the same numbers
instead of copying them around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla.registry import Registry

N_JOINTS = 7
HOME = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)


def _vec(name: str, values: object) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.shape != (N_JOINTS,):
        raise ValueError(f"{name} must have shape ({N_JOINTS},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    arr.setflags(write=False)  # shared module-level tables must not be edited by accident
    return arr


@dataclass(frozen=True, eq=False)
class JointLimits:
    """Limits of the 7 arm joints, in the robot's joint order (joint1..joint7)."""

    robot: str
    joint_names: tuple[str, ...]
    q_min: np.ndarray
    q_max: np.ndarray
    dq_max: np.ndarray
    ddq_max: np.ndarray
    jerk_max: np.ndarray
    home: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(self.joint_names)
        if len(names) != N_JOINTS or len(set(names)) != N_JOINTS:
            raise ValueError(f"{self.robot}: need {N_JOINTS} distinct joint names, got {list(names)}")
        object.__setattr__(self, "joint_names", names)
        for field_name in ("q_min", "q_max", "dq_max", "ddq_max", "jerk_max", "home"):
            object.__setattr__(self, field_name, _vec(f"{self.robot}.{field_name}", getattr(self, field_name)))
        if not np.all(self.q_min < self.q_max):
            raise ValueError(f"{self.robot}: q_min must be < q_max joint-wise")
        for field_name in ("dq_max", "ddq_max", "jerk_max"):
            if not np.all(getattr(self, field_name) > 0):
                raise ValueError(f"{self.robot}: {field_name} must be positive")
        if not np.all((self.home >= self.q_min) & (self.home <= self.q_max)):
            raise ValueError(f"{self.robot}: home pose {self.home.tolist()} is outside the joint limits")

    def check_names(self, names: Sequence[str]) -> np.ndarray:
        """Index permutation `idx` with ``ours = msg_values[idx]``.

        Extra names (e.g. the gripper fingers merged into /joint_states) are allowed; a missing or
        duplicated arm joint raises ValueError naming what was expected and what came.
        """
        got = [str(n) for n in names]
        missing = [n for n in self.joint_names if n not in got]
        if missing:
            raise ValueError(
                f"{self.robot}: joint names missing {missing}; expected {list(self.joint_names)}, got {got}"
            )
        duplicated = [n for n in self.joint_names if got.count(n) > 1]
        if duplicated:
            raise ValueError(f"{self.robot}: joint names repeated {duplicated}; got {got}")
        return np.array([got.index(n) for n in self.joint_names], dtype=np.intp)


FR3 = JointLimits(
    robot="fr3",
    joint_names=tuple(f"fr3_joint{i}" for i in range(1, 8)),
    q_min=(-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),  # type: ignore[arg-type]  # __post_init__ makes arrays
    q_max=(2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159),  # type: ignore[arg-type]  # __post_init__ makes arrays
    dq_max=(2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26),  # type: ignore[arg-type]  # __post_init__ makes arrays
    ddq_max=(10.0,) * 7,  # type: ignore[arg-type]  # __post_init__ makes arrays
    jerk_max=(5000.0,) * 7,  # type: ignore[arg-type]  # __post_init__ makes arrays
    home=HOME,  # type: ignore[arg-type]  # __post_init__ makes arrays
)

PANDA = JointLimits(
    robot="panda",
    joint_names=tuple(f"fer_joint{i}" for i in range(1, 8)),
    q_min=(-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),  # type: ignore[arg-type]  # __post_init__ makes arrays
    q_max=(2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),  # type: ignore[arg-type]  # __post_init__ makes arrays
    dq_max=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),  # type: ignore[arg-type]  # __post_init__ makes arrays
    ddq_max=(15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0),  # type: ignore[arg-type]  # __post_init__ makes arrays
    jerk_max=(7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0),  # type: ignore[arg-type]  # __post_init__ makes arrays
    home=HOME,  # type: ignore[arg-type]  # __post_init__ makes arrays
)

ROBOTS: Registry[JointLimits] = Registry("robot")
ROBOTS.add("fr3", FR3)
ROBOTS.add("panda", PANDA)


def get_limits(name: str) -> JointLimits:
    """The limits table of a robot by name; unknown names raise an error listing fr3 and panda."""
    return ROBOTS.get(name)
