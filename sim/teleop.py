"""A person's end-effector twist -> each suite's own delta action (teleoperation in simulation).

Every suite here is driven in end-effector delta control; they differ in scale, in whether
rotation is commanded and in the sign that closes the gripper. One small layout per suite
says so, instead of if/elif on suite names where actions are made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.registry import Registry


@dataclass(frozen=True)
class EndEffectorDeltaLayout:
    """``[dx dy dz (drx dry drz) gripper]`` in the suite's normalized [-1, 1] action units."""

    translation_gain: float  # action units at full device deflection (speed 1)
    rotation_gain: float | None  # None: the suite's actions have no rotation
    gripper_close: float  # the gripper value that closes (+1 or -1); its negative opens
    note: str = ""

    @property
    def action_dim(self) -> int:
        return 4 if self.rotation_gain is None else 7

    def action(self, twist: np.ndarray, gripper_closed: bool, speed: float = 1.0) -> np.ndarray:
        twist = np.clip(np.asarray(twist, dtype=np.float32).reshape(6), -1.0, 1.0)
        parts = [twist[:3] * self.translation_gain * speed]
        if self.rotation_gain is not None:
            parts.append(twist[3:] * self.rotation_gain * speed)
        parts.append([self.gripper_close if gripper_closed else -self.gripper_close])
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)

    def twist(self, action: np.ndarray, speed: float = 1.0) -> tuple[np.ndarray, bool]:
        """The device input that would produce ``action`` (clipped to full deflection): lets a
        scripted expert stand in for the person (a virtual operator in tests and benchmarks)."""
        action = np.asarray(action, dtype=np.float32)
        twist = np.zeros(6, dtype=np.float32)
        twist[:3] = action[:3] / (self.translation_gain * speed)
        if self.rotation_gain is not None:
            twist[3:] = action[3:6] / (self.rotation_gain * speed)
        return np.clip(twist, -1.0, 1.0), bool(action[-1] * self.gripper_close > 0)


TELEOP_LAYOUTS: Registry[EndEffectorDeltaLayout] = Registry("teleop action layout (suite)")
# robosuite OSC_POSE: 1.0 = 5 cm / 0.5 rad per 20 Hz step; 0.4 -> 0.4 m/s at full deflection
TELEOP_LAYOUTS.add("robomimic", EndEffectorDeltaLayout(0.4, 0.3, +1.0, "robosuite OSC_POSE, -1 opens"))
TELEOP_LAYOUTS.add("libero", EndEffectorDeltaLayout(0.4, 0.3, +1.0, "robosuite OSC_POSE, -1 opens"))
# ManiSkill pd_ee_delta_pose: 1.0 = 10 cm / 0.1 rad per step
TELEOP_LAYOUTS.add("maniskill", EndEffectorDeltaLayout(0.2, 0.5, -1.0, "pd_ee_delta_pose, +1 opens"))
# Meta-World: xyz mocap deltas (1.0 = 1 cm per 80 Hz step), grab effort +1 closes, no rotation
TELEOP_LAYOUTS.add("metaworld", EndEffectorDeltaLayout(0.5, None, +1.0, "mocap xyz, +1 closes"))


def teleop_layout(suite: str, action_dim: int) -> EndEffectorDeltaLayout:
    """The layout of ``suite``, checked against the env's action size."""
    layout = TELEOP_LAYOUTS.get(suite)
    if layout.action_dim != action_dim:
        raise ValueError(
            f"{suite} teleop maps to {layout.action_dim}-d actions but this env takes {action_dim}-d ones; "
            "teleoperation needs the suite's end-effector delta controller"
        )
    return layout
