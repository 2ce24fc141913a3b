"""Scripted pick-and-place experts for robosuite Lift, PickPlaceCan and NutAssemblySquare (OSC_POSE).

All are the same phase machine over end-effector waypoints computed from object poses:
hover over the object, descend, close, lift, (carry, lower, release, retreat). For Lift and
PickPlaceCan rotation is held fixed (gripper pointing down); the parallel gripper squares the
cube/can as it closes. NutAssemblySquare also levels the gripper and turns it about z: across
the nut's handle to grasp it, then so the nut's square hole lines up with the square peg; it
servos the nut itself once grasped, and plans again if it drops it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OSC_MAX_TRANSLATION = 0.05  # metres per step at |action| = 1 (robosuite OSC_POSE output_max)
OSC_MAX_ROTATION = 0.5  # rad per step at |action| = 1
OPEN, CLOSE = -1.0, 1.0
WRIST_LIMIT = 2.8973  # the Panda's last joint, +-rad
# planned turns keep the wrist this far inside its limits: carrying the nut across, it swings up
# to ~0.5 rad past the angle it settles at
WRIST_MARGIN = 0.75


@dataclass
class Phase:
    name: str
    target: np.ndarray | None  # end-effector position to reach; None: hold position
    gripper: float
    tolerance: float = 0.01
    min_steps: int = 0  # dwell (e.g. while the fingers close)
    max_steps: int = 60  # give up on reaching exactly (e.g. fingertips touching the floor)
    # raw-obs key of a grasped object's position: servo that point to ``target`` instead of the
    # end effector (a grasp that slipped or turned still brings the object where it must go)
    servo: str | None = None
    # target heading (rad) of the fingers' closing axis, or with ``servo`` of the object's x axis,
    # P-controlled by the rotation about world z; None: no turning
    yaw: float | None = None
    yaw_tolerance: float = np.deg2rad(3.0)  # part of "reached"; inf: don't wait for the turn


def move_action(
    eef: np.ndarray,
    target: np.ndarray,
    gripper: float,
    gain: float = 10.0,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """OSC_POSE action towards ``target``: proportional in position and in ``rotation`` (an
    axis-angle error in the world frame, rad); no rotation by default."""
    delta = np.clip(gain * (target - eef) / (OSC_MAX_TRANSLATION * 10.0), -1.0, 1.0)
    turn = np.zeros(3) if rotation is None else np.clip(rotation / OSC_MAX_ROTATION, -1.0, 1.0)
    return np.concatenate([delta, turn, [gripper]]).astype(np.float32)


def wrap(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` modulo ``period``, in [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def quat_yaw(quat_xyzw: np.ndarray, axis: int = 0) -> float:
    """Heading in the world xy-plane of a body axis (0: x, 1: y) given the body's quaternion."""
    x, y, z, w = quat_xyzw
    if axis == 0:
        return float(np.arctan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z)))
    return float(np.arctan2(1 - 2 * (x * x + z * z), 2 * (x * y - w * z)))


def tilt_error(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame, about x and y only) that turns the eef's z axis straight down."""
    x, y, z, w = quat_xyzw
    approach = np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])
    axis = np.cross(approach, [0.0, 0.0, -1.0])  # |axis| = sin(angle)
    sin = np.linalg.norm(axis)
    if sin < 1e-9:
        return np.zeros(3)
    return axis / sin * np.arctan2(sin, -approach[2])


def finger_yaw(raw: dict) -> float:
    """Heading of the fingers' closing axis (defined modulo pi): the eef frame's y axis."""
    return quat_yaw(raw["robot0_eef_quat"], axis=1)


class PhaseExpert:
    """Runs ``plan(raw_obs)`` phases in order; a phase ends when its target is reached."""

    # closed-loop P control on end-effector position: noise on these dims gets corrected (DART)
    servoed_action_dims = (0, 1, 2)
    level = False  # also servo the gripper to point straight down (else: no rotation but a yaw target's)
    # a ``servo`` object farther than this from the eef was dropped (or missed): plan again from here
    held_within = np.inf

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
        phase = self.phases[self.index]
        if phase.servo and np.linalg.norm(raw[phase.servo + "_pos"] - raw["robot0_eef_pos"]) > self.held_within:
            self.reset(env)
            phase = self.phases[self.index]
        point, yaw_error = self.measure(phase, raw)
        reached = phase.target is None or np.linalg.norm(phase.target - point) < phase.tolerance
        reached &= abs(yaw_error) < phase.yaw_tolerance
        reached |= self.steps_in_phase >= phase.max_steps
        if reached and self.steps_in_phase >= phase.min_steps and self.index < len(self.phases) - 1:
            self.index += 1
            self.steps_in_phase = 0
            phase = self.phases[self.index]
            point, yaw_error = self.measure(phase, raw)
        self.steps_in_phase += 1
        target = point if phase.target is None else phase.target
        rotation = None
        if self.level or phase.yaw is not None:
            rotation = np.array([0.0, 0.0, yaw_error])
            if self.level:
                rotation += tilt_error(raw["robot0_eef_quat"])
        return move_action(point, target, phase.gripper, rotation=rotation)

    @staticmethod
    def measure(phase: Phase, raw: dict) -> tuple[np.ndarray, float]:
        """The servoed point (eef or grasped object) and the wrapped yaw error (0 without a yaw target)."""
        if phase.servo is None:
            point = raw["robot0_eef_pos"]
            yaw = None if phase.yaw is None else finger_yaw(raw)
        else:
            point = raw[phase.servo + "_pos"]
            yaw = None if phase.yaw is None else quat_yaw(raw[phase.servo + "_quat"])
        return point, (0.0 if yaw is None else wrap(phase.yaw - yaw))


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


class NutAssemblySquareExpert(PhaseExpert):
    """Grasp the square nut by its handle, turn it square to the peg, lower it over the peg."""

    # Yaw is P-controlled towards absolute headings, like position. Roll and pitch are too (level:
    # the arm starts tilted by up to ~10 degrees, which keeps one fingertip above the nut's 2 cm
    # tall handle), but not declared: DART noise at a std that suits position (0.5: 0.25 rad a
    # step) tips the fingers off the handle (7/30 successes on all six dims, 16/20 on these four).
    servoed_action_dims = (0, 1, 2, 5)
    level = True
    held_within = 0.1  # the grip is 6.4 cm from the nut's centre

    NUT = "SquareNut"
    PEG_TOP = 0.1  # the peg's half-height above its body position
    # grip 1 cm beyond the handle site (5.4 cm from the nut's centre): open fingers over the site
    # land on the edge of the nut's side bar, 4.4 cm out
    GRIP_OUT = 0.01

    @staticmethod
    def turns(nut_yaw: float, finger_yaw: float, wrist: float) -> tuple[float, float]:
        """The eef's turns about z (rad): to the grasp, then (nut in hand) to square the nut on the peg.

        Grasped, the fingers close along the nut's y axis, either way round (modulo pi). Square
        on the peg, the handle points along -x, +y or -y: along +x the gripper would be beyond the
        Panda's reach over the peg. Of these, the least turning that keeps the wrist joint (range
        +-2.9 rad; turning the eef by +a about z turns it by about -a) WRIST_MARGIN off its limits.
        """
        to_handle = wrap(nut_yaw + np.pi / 2 - finger_yaw, np.pi)
        options = [
            (turn, wrap(heading - nut_yaw))
            for heading in (np.pi, np.pi / 2, -np.pi / 2)
            for turn in (to_handle, to_handle + np.pi, to_handle - np.pi)
        ]

        def beyond_limit(option):
            turn, square_turn = option
            excess = max(abs(wrist - turn), abs(wrist - turn - square_turn)) - (WRIST_LIMIT - WRIST_MARGIN)
            return max(excess, 0.0)

        return min(options, key=lambda o: (beyond_limit(o), abs(o[0]) + abs(o[1])))

    def plan(self, env, raw):
        sim = env.raw
        nut = raw[f"{self.NUT}_pos"].copy()
        nut[2] = sim.table_offset[2] + 0.01  # the nut lies flat on the table (it spawns above it)
        handle = np.array(sim.sim.data.site_xpos[sim.sim.model.site_name2id(f"{self.NUT}_handle_site")])
        reach = np.linalg.norm(handle[:2] - raw[f"{self.NUT}_pos"][:2]) + self.GRIP_OUT
        nut_yaw = quat_yaw(raw[f"{self.NUT}_quat"])
        grip = nut + reach * np.array([np.cos(nut_yaw), np.sin(nut_yaw), 0.0])
        peg = np.array(sim.sim.data.body_xpos[sim.peg1_body_id])
        turn, square_turn = self.turns(nut_yaw, finger_yaw(raw), float(sim.robots[0]._joint_positions[-1]))
        grasp_yaw = finger_yaw(raw) + turn
        above = peg[2] + self.PEG_TOP + 0.05  # nut centre, its bottom clear of the peg top
        heading = nut_yaw + square_turn
        placed_grip = peg + reach * np.array([np.cos(heading), np.sin(heading), 0.0])
        square = {"servo": self.NUT, "yaw": heading}
        return [
            Phase("hover", grip + [0, 0, 0.08], OPEN, tolerance=0.005, yaw=grasp_yaw),
            Phase("descend", grip, OPEN, tolerance=0.005, max_steps=25, yaw=grasp_yaw, yaw_tolerance=np.inf),
            Phase("grasp", None, CLOSE, min_steps=10),
            Phase("lift", np.array([nut[0], nut[1], above]), CLOSE, tolerance=0.02, **square, yaw_tolerance=np.inf),
            Phase("carry", np.array([peg[0], peg[1], above]), CLOSE, tolerance=0.01, **square),
            # the hole clears the peg by 7 mm a side when square: centre and square it first
            Phase("align", np.array([peg[0], peg[1], above]), CLOSE, tolerance=0.004, **square),
            Phase(
                "lower",
                np.array([peg[0], peg[1], nut[2]]),
                CLOSE,
                tolerance=0.01,
                max_steps=40,
                **square,
                yaw_tolerance=np.inf,
            ),
            # success (nut low on the peg, gripper > 4.2 cm from its centre) mostly comes while
            # lowering; a nut that stopped higher up slides down once let go
            Phase("release", None, OPEN, min_steps=10),
            Phase("retreat", placed_grip + [0, 0, 0.15], OPEN),
        ]


EXPERTS = {"Lift": LiftExpert, "PickPlaceCan": PickPlaceCanExpert, "NutAssemblySquare": NutAssemblySquareExpert}
