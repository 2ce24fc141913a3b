"""Scripted pick-and-place experts for robosuite Lift and PickPlaceCan (OSC_POSE control).

Both are the same phase machine over end-effector waypoints computed from object poses:
hover over the object, descend, close, lift, (carry, lower, release, retreat). Rotation is held
fixed (gripper pointing down); the parallel gripper squares the cube/can as it closes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OSC_MAX_TRANSLATION = 0.05  # metres per step at |action| = 1 (robosuite OSC_POSE output_max)
OPEN, CLOSE = -1.0, 1.0


@dataclass
class Phase:
    name: str
    target: np.ndarray | None  # end-effector position to reach; None: hold position
    gripper: float
    tolerance: float = 0.01
    min_steps: int = 0  # dwell (e.g. while the fingers close)
    max_steps: int = 60  # give up on reaching exactly (e.g. fingertips touching the floor)


def move_action(eef: np.ndarray, target: np.ndarray, gripper: float, gain: float = 10.0) -> np.ndarray:
    """OSC_POSE action towards ``target``: proportional in position, no rotation."""
    delta = np.clip(gain * (target - eef) / (OSC_MAX_TRANSLATION * 10.0), -1.0, 1.0)
    return np.concatenate([delta, np.zeros(3), [gripper]]).astype(np.float32)


class PhaseExpert:
    """Runs ``plan(raw_obs)`` phases in order; a phase ends when its target is reached."""

    # closed-loop P control on end-effector position: noise on these dims gets corrected (DART)
    servoed_action_dims = (0, 1, 2)

    def __init__(self, task: str):
        self.task = task
        self.phases: list[Phase] = []
        self.index = 0
        self.steps_in_phase = 0

    def plan(self, env, raw: dict) -> list[Phase]:
        raise NotImplementedError

    def reset(self, env) -> None:
        self.phases = self.plan(env, env.last_raw_obs)
        self.index = 0
        self.steps_in_phase = 0

    def act(self, env) -> np.ndarray:
        raw = env.last_raw_obs
        eef = raw["robot0_eef_pos"]
        phase = self.phases[self.index]
        reached = phase.target is None or np.linalg.norm(phase.target - eef) < phase.tolerance
        reached |= self.steps_in_phase >= phase.max_steps
        if reached and self.steps_in_phase >= phase.min_steps and self.index < len(self.phases) - 1:
            self.index += 1
            self.steps_in_phase = 0
            phase = self.phases[self.index]
        self.steps_in_phase += 1
        target = eef if phase.target is None else phase.target
        return move_action(eef, target, phase.gripper)


class LiftExpert(PhaseExpert):
    def plan(self, env, raw):
        cube = raw["cube_pos"].copy()
        return [
            Phase("hover", cube + [0, 0, 0.08], OPEN),
            Phase("descend", cube + [0, 0, -0.005], OPEN, tolerance=0.008),
            Phase("grasp", None, CLOSE, min_steps=8),
            Phase("lift", cube + [0, 0, 0.25], CLOSE),
        ]


class PickPlaceCanExpert(PhaseExpert):
    def plan(self, env, raw):
        can = raw["Can_pos"].copy()
        sim = env.raw
        goal = np.array(sim.target_bin_placements[sim.object_to_id["can"]], dtype=np.float64)
        carry_z = goal[2] + 0.25
        return [
            Phase("hover", can + [0, 0, 0.08], OPEN),
            Phase("descend", can + [0, 0, 0.0], OPEN, tolerance=0.008, max_steps=25),
            Phase("grasp", None, CLOSE, min_steps=8),
            Phase("lift", np.array([can[0], can[1], carry_z]), CLOSE, tolerance=0.02),
            Phase("carry", np.array([goal[0], goal[1], carry_z]), CLOSE, tolerance=0.02),
            Phase("lower", goal + [0, 0, 0.13], CLOSE, tolerance=0.02, max_steps=30),
            Phase("release", None, OPEN, min_steps=10),
            # PickPlace only counts the can as placed once the gripper is > ~7 cm away
            Phase("retreat", np.array([goal[0], goal[1], carry_z]), OPEN),
        ]


EXPERTS = {"Lift": LiftExpert, "PickPlaceCan": PickPlaceCanExpert}
