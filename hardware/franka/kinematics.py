"""Panda kinematics from robosuite's own model, and OSC_POSE delta actions -> joint targets.

Policies trained in robosuite / RoboMimic / LIBERO output OSC_POSE deltas
``[dx, dy, dz, dax, day, daz, gripper]`` in [-1, 1]. In simulation robosuite's operational-space
controller turns them into a goal pose for the grip site; a real Franka driven through a
JointTrajectoryController needs joint positions instead. This module builds the arm's kinematic
chain from the very MJCF files robosuite's environments load (so the grip site, link offsets and
joint axes are identical), forms the goal pose exactly like robosuite 1.4's OSC does, and solves
IK to it.

mujoco and robosuite are imported lazily (inside functions): importing this module costs numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hardware.franka.limits import PANDA

ARM_DOF = 7

# Names in robosuite 1.4 (standalone model and environments alike: robot idn 0, gripper idn 0).
ARM_JOINT_NAMES = tuple(f"robot0_joint{i}" for i in range(1, ARM_DOF + 1))
GRIP_SITE = "gripper0_grip_site"  # what OSC controls and what `robot0_eef_pos` reports
HAND_BODY = "robot0_right_hand"  # whose xquat `robot0_eef_quat` reports (xyzw)


# ----------------------------------------------------------------------------- pure math


def _vector(x: Any, n: int, name: str) -> np.ndarray:
    """A finite float64 copy of ``x`` with shape (n,), or a ValueError saying what was wrong."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr.copy()


def _rotation(x: Any, name: str) -> np.ndarray:
    """A finite (3, 3) rotation matrix, refusing anything that is not (nearly) orthonormal."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (3, 3):
        raise ValueError(f"{name} must have shape (3, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if not np.allclose(arr @ arr.T, np.eye(3), atol=1e-5) or np.linalg.det(arr) < 0.0:
        raise ValueError(f"{name} is not a rotation matrix (R R^T != I or det < 0)")
    return arr.copy()


def quat_wxyz_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (not necessarily unit) wxyz quaternion."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def mat_to_quat_wxyz(rot: np.ndarray) -> np.ndarray:
    """Unit wxyz quaternion of a rotation matrix with w >= 0 (Shepperd's branch choice, stable near 180 deg)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > max(m[0, 0], m[1, 1], m[2, 2]):
        s = 2.0 * math.sqrt(1.0 + tr)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 0.0))
        q = np.array([(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s])
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 0.0))
        q = np.array([(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s])
    else:
        s = 2.0 * math.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 0.0))
        q = np.array([(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0.0 else q


def quat_mul_wxyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b of wxyz quaternions (the composition MuJoCo uses for body xquat)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def axis_angle_to_mat(vec: np.ndarray) -> np.ndarray:
    """Rotation of the scaled axis ``vec`` (angle = norm), Rodrigues; an exactly-zero vector is the identity."""
    v = np.asarray(vec, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle == 0.0:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * (kx @ kx)


def mat_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """Scaled axis (log map) of a rotation matrix, angle in [0, pi]; accurate near 0 and near pi."""
    m = np.asarray(rot, dtype=np.float64)
    cos_a = float(np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos_a)
    w = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])
    if angle < 1e-6:
        return 0.5 * w  # first order: R ~ I + [w]x
    if angle < math.pi - 1e-4:
        return angle / (2.0 * math.sin(angle)) * w
    # Near pi: the axis comes from the symmetric part, its sign from the (tiny) skew part.
    sym = (m + m.T) / 2.0 - cos_a * np.eye(3)
    axis = sym[int(np.argmax(np.diag(sym)))]
    axis = axis / np.linalg.norm(axis)
    if np.dot(axis, w) < 0.0:
        axis = -axis
    return angle * axis


def rotation_error(target_rot: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking ``rot`` to ``target_rot`` (log of target * rot^T)."""
    return mat_to_axis_angle(np.asarray(target_rot) @ np.asarray(rot).T)


# ----------------------------------------------------------------------------- kinematics


class IkResult(NamedTuple):
    """IK outcome: joint solution (always within limits), whether |error| < tol, and that error."""

    q: np.ndarray
    converged: bool
    err: float  # norm of [position error (m), rotation error (rad)] at q


def build_robosuite_panda_model() -> Any:
    """Compile robosuite's Panda + PandaGripper into a ``mujoco.MjModel`` (robot base at the origin).

    The robot is merged into robosuite's own world base (whose ``<compiler angle="radian">`` the
    robot XML relies on: compiled alone its joint ranges would be read as degrees), exactly as
    robosuite's environments do, minus arena, mount and objects, which do not move the arm.
    """
    from robosuite.models.grippers import gripper_factory
    from robosuite.models.robots import Panda
    from robosuite.models.world import MujocoWorldBase

    robot = Panda(idn=0)
    robot.add_gripper(gripper_factory("PandaGripper", idn=0))
    world = MujocoWorldBase()
    world.merge(robot)
    return world.get_model(mode="mujoco")


class PandaKinematics:
    """Forward/inverse kinematics of robosuite's Panda grip site, expressed in the policy's world frame.

    ``base_pos`` / ``base_quat`` (wxyz) are the robot base pose in the world frame the policy was
    trained in (robosuite: body ``robot0_base``; Lift puts it at (-0.56, 0, 0.912)), so positions
    match robosuite's ``robot0_eef_pos``. Not thread-safe: one MjData is reused for every call.
    """

    def __init__(
        self,
        base_pos: Any = (0.0, 0.0, 0.0),
        base_quat: Any = (1.0, 0.0, 0.0, 0.0),
        q_min: Any | None = None,
        q_max: Any | None = None,
    ) -> None:
        import mujoco

        self._mj = mujoco
        self.base_pos = _vector(base_pos, 3, "base_pos")
        quat = _vector(base_quat, 4, "base_quat (wxyz)")
        norm = float(np.linalg.norm(quat))
        if norm < 1e-9:
            raise ValueError("base_quat (wxyz) must be a non-zero quaternion")
        self.base_quat = quat / norm  # sign kept: robot0_eef_quat's sign depends on it
        self.base_rot = quat_wxyz_to_mat(self.base_quat)

        # Panda (FER) limits from franka_description; robosuite's panda/robot.xml carries the same ranges.
        self.q_min = np.array(PANDA.q_min) if q_min is None else _vector(q_min, ARM_DOF, "q_min")
        self.q_max = np.array(PANDA.q_max) if q_max is None else _vector(q_max, ARM_DOF, "q_max")
        if np.any(self.q_min >= self.q_max):
            raise ValueError(f"q_min must be < q_max per joint, got {self.q_min} / {self.q_max}")

        self.model = build_robosuite_panda_model()
        self.data = mujoco.MjData(self.model)
        m = self.model
        names = [m.joint(i).name for i in range(m.njnt)]
        missing = [n for n in ARM_JOINT_NAMES if n not in names]
        if missing:
            raise RuntimeError(f"robosuite Panda model lacks joints {missing}; it has {names}")
        self._qadr = np.array([m.joint(n).qposadr[0] for n in ARM_JOINT_NAMES])
        self._dofadr = np.array([m.joint(n).dofadr[0] for n in ARM_JOINT_NAMES])
        sites = [m.site(i).name for i in range(m.nsite)]
        if GRIP_SITE not in sites:
            raise RuntimeError(f"robosuite Panda model lacks site {GRIP_SITE!r}; it has {sites}")
        self._site_id = m.site(GRIP_SITE).id
        self._hand_id = m.body(HAND_BODY).id
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        # Fixed rotation of the grip site in the hand body (PandaGripper turns it -90 deg about z).
        self._kinematics(np.zeros(ARM_DOF))
        hand_rot = self.data.xmat[self._hand_id].reshape(3, 3)
        self._site_in_hand = hand_rot.T @ self.data.site_xmat[self._site_id].reshape(3, 3)

    @classmethod
    def from_robosuite_env(cls, env: Any, robot_index: int = 0, **kwargs: Any) -> PandaKinematics:
        """Kinematics whose world frame is a live robosuite env's (base pose read from its sim)."""
        robots = getattr(env, "robots", None)
        if not robots or not 0 <= robot_index < len(robots):
            raise ValueError(f"robot_index {robot_index} out of range for env with {len(robots or [])} robots")
        root = robots[robot_index].robot_model.root_body
        data = env.sim.data
        bid = env.sim.model.body_name2id(root)
        return cls(base_pos=np.array(data.xpos[bid]), base_quat=np.array(data.xquat[bid]), **kwargs)

    # -- helpers

    def _check_q(self, q: Any, name: str = "q") -> np.ndarray:
        return _vector(q, ARM_DOF, name)

    def _kinematics(self, q: np.ndarray) -> None:
        self.data.qpos[:] = 0.0
        self.data.qpos[self._qadr] = q
        self._mj.mj_kinematics(self.model, self.data)

    def _fk_local(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._kinematics(q)
        return self.data.site_xpos[self._site_id].copy(), self.data.site_xmat[self._site_id].reshape(3, 3).copy()

    def _jacobian_local(self, q: np.ndarray) -> np.ndarray:
        self._kinematics(q)
        self._mj.mj_comPos(self.model, self.data)
        self._mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._site_id)
        return np.vstack([self._jacp[:, self._dofadr], self._jacr[:, self._dofadr]])

    # -- public API

    def fk(self, q: Any) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site position (3,) and rotation (3, 3) in the world frame: robosuite's eef pos and OSC ee_ori_mat."""
        p, r = self._fk_local(self._check_q(q))
        return self.base_rot @ p + self.base_pos, self.base_rot @ r

    def jacobian(self, q: Any) -> np.ndarray:
        """(6, 7) world-frame geometric Jacobian of the grip site: rows [linear; angular]."""
        jac = self._jacobian_local(self._check_q(q))
        return np.vstack([self.base_rot @ jac[:3], self.base_rot @ jac[3:]])

    def fk_eef_quat_xyzw(self, q: Any) -> np.ndarray:
        """robosuite's ``robot0_eef_quat`` (hand body quaternion, xyzw) with MuJoCo's own sign.

        The sign matters to policies: the Panda hand points down, so w ~ 0 and a canonical
        "w >= 0" quaternion would flip between observations where robosuite's does not.
        """
        self._kinematics(self._check_q(q))
        wxyz = quat_mul_wxyz(self.base_quat, self.data.xquat[self._hand_id])
        wxyz /= np.linalg.norm(wxyz)
        return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])

    def eef_quat_xyzw(self, rot: Any, reference: Any | None = None) -> np.ndarray:
        """``robot0_eef_quat``-convention quaternion (hand body, xyzw) of a grip-site rotation from :meth:`fk`.

        A matrix fixes the quaternion only up to sign: it is chosen on the same hemisphere as
        ``reference`` (xyzw, e.g. the previous observation) if given, else with w >= 0.
        Prefer :meth:`fk_eef_quat_xyzw` when joint angles are at hand.
        """
        hand_rot = _rotation(rot, "rot") @ self._site_in_hand.T
        wxyz = mat_to_quat_wxyz(hand_rot)
        xyzw = np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])
        if reference is not None and float(np.dot(xyzw, _vector(reference, 4, "reference"))) < 0.0:
            xyzw = -xyzw
        return xyzw

    def ik(
        self,
        target_pos: Any,
        target_rot: Any,
        q_seed: Any,
        max_iters: int = 100,
        tol: float = 1e-6,
        damping: float = 0.1,
    ) -> IkResult:
        """Damped-least-squares IK of the grip site, seeded at ``q_seed``, every iterate clipped to the joint limits.

        Joints sitting on a limit and pushed further out are frozen for that step so the others
        take up the motion. ``converged`` is False when the pose is out of reach: ``q`` is then
        the closest configuration found, still within limits.
        """
        p_t = _vector(target_pos, 3, "target_pos")
        r_t = _rotation(target_rot, "target_rot")
        q = np.clip(self._check_q(q_seed, "q_seed"), self.q_min, self.q_max)
        if max_iters < 1 or not tol > 0.0 or not damping > 0.0:
            raise ValueError(f"need max_iters >= 1, tol > 0, damping > 0; got {max_iters}, {tol}, {damping}")
        # Solve in the base frame: same solution, no per-iteration frame change.
        p_t = self.base_rot.T @ (p_t - self.base_pos)
        r_t = self.base_rot.T @ r_t

        def error_at(qq: np.ndarray) -> np.ndarray:
            p, r = self._fk_local(qq)
            return np.concatenate([p_t - p, rotation_error(r_t, r)])

        e = error_at(q)
        err = float(np.linalg.norm(e))
        for _ in range(max_iters):
            if err < tol:
                break
            step = e.copy()  # keep each linearised step modest so far targets do not overshoot
            step[:3] *= min(1.0, 0.2 / max(np.linalg.norm(step[:3]), 1e-12))
            step[3:] *= min(1.0, 0.5 / max(np.linalg.norm(step[3:]), 1e-12))
            jac = self._jacobian_local(q)
            # Levenberg-Marquardt-style damping that shrinks with the error: robust far from the
            # goal and near singularities, Gauss-Newton-fast (no damping bias) close to it.
            lam2 = damping * damping * min(err, 1.0) + 1e-12
            free = np.ones(ARM_DOF, dtype=bool)
            for _ in range(ARM_DOF):
                jf = jac * free
                dq = jf.T @ np.linalg.solve(jf @ jf.T + lam2 * np.eye(6), step)
                blocked = free & (((q <= self.q_min) & (dq < 0.0)) | ((q >= self.q_max) & (dq > 0.0)))
                if not blocked.any():
                    break
                free &= ~blocked
            q_new = np.clip(q + dq, self.q_min, self.q_max)
            e_new = error_at(q_new)
            err_new = float(np.linalg.norm(e_new))
            if err_new >= err and np.allclose(q_new, q, atol=1e-12):
                break  # stuck against the limits
            q, e, err = q_new, e_new, err_new
        return IkResult(q, err < tol, err)


# ----------------------------------------------------------------------------- OSC deltas


@dataclass(frozen=True)
class OscDeltaConfig:
    """How an OSC_POSE delta action is scaled, as robosuite 1.4 does it.

    Defaults are robosuite 1.4.0's ``controllers/config/osc_pose.json``: input_min/max -1/1,
    output_max/min +-0.05 m (position) and +-0.5 rad (axis-angle rotation), i.e. a full-scale
    action asks for 5 cm / 0.5 rad per policy step (20 Hz in robosuite). ``from_robosuite_defaults``
    reads that file from the installed package.
    """

    pos_scale: float = 0.05  # m at |input| == input_max
    rot_scale: float = 0.5  # rad at |input| == input_max
    input_min: float = -1.0
    input_max: float = 1.0
    # robosuite only replaces goal_ori when the rotation delta is non-zero; otherwise it keeps
    # the previous goal orientation (not the current one). True reproduces that.
    hold_orientation_on_zero_rotation: bool = True
    ik_max_iters: int = 100
    ik_tol: float = 1e-6
    # Optional box (robot base frame, m) the goal position is clipped into before IK, as LeRobot's
    # end-effector bounds do: a policy pushing past the workspace slides along its wall instead of
    # having its trajectory refused by the safety layer (which stays the backstop).
    goal_box_min: tuple[float, float, float] | None = None
    goal_box_max: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not (self.pos_scale > 0.0 and self.rot_scale > 0.0):
            raise ValueError(f"pos_scale and rot_scale must be > 0, got {self.pos_scale}, {self.rot_scale}")
        if not self.input_max > self.input_min:
            raise ValueError(f"input_max must be > input_min, got {self.input_min}, {self.input_max}")
        if self.ik_max_iters < 1 or not self.ik_tol > 0.0:
            raise ValueError(f"ik_max_iters must be >= 1 and ik_tol > 0, got {self.ik_max_iters}, {self.ik_tol}")
        if (self.goal_box_min is None) != (self.goal_box_max is None):
            raise ValueError("set both goal_box_min and goal_box_max, or neither")
        if self.goal_box_min is not None and not np.all(np.asarray(self.goal_box_max) > np.asarray(self.goal_box_min)):
            raise ValueError(f"goal_box_max must exceed goal_box_min, got {self.goal_box_min} .. {self.goal_box_max}")

    @classmethod
    def from_robosuite_defaults(cls, **overrides: Any) -> OscDeltaConfig:
        """Scales read from the installed robosuite's OSC_POSE default controller config."""
        from robosuite.controllers import load_controller_config

        cfg = load_controller_config(default_controller="OSC_POSE")
        out_max = np.broadcast_to(np.asarray(cfg["output_max"], dtype=np.float64), (6,))
        out_min = np.broadcast_to(np.asarray(cfg["output_min"], dtype=np.float64), (6,))
        if not (np.allclose(out_max, -out_min) and np.ptp(out_max[:3]) == 0 and np.ptp(out_max[3:]) == 0):
            raise ValueError(f"OSC_POSE config is not symmetric per group: output_min {out_min}, output_max {out_max}")
        if not (np.isscalar(cfg["input_max"]) and np.isscalar(cfg["input_min"])):
            raise ValueError(f"OSC_POSE config has per-axis input limits, unsupported: {cfg['input_min']}")
        values = dict(
            pos_scale=float(out_max[0]),
            rot_scale=float(out_max[3]),
            input_min=float(cfg["input_min"]),
            input_max=float(cfg["input_max"]),
        )
        values.update(overrides)
        return cls(**values)

    def scale(self, arm_action: np.ndarray) -> np.ndarray:
        """Clip to [input_min, input_max] and map linearly onto [-scale, +scale] (robosuite's scale_action)."""
        a = np.clip(np.asarray(arm_action, dtype=np.float64), self.input_min, self.input_max)
        mid = (self.input_max + self.input_min) / 2.0
        unit = (a - mid) * (2.0 / (self.input_max - self.input_min))
        return unit * np.array([self.pos_scale] * 3 + [self.rot_scale] * 3)


class EEDeltaToJoint:
    """Turns robosuite OSC_POSE delta actions into Panda joint-position targets.

    Goal pose as robosuite 1.4's OSC forms it (world frame): position = current grip-site
    position + scaled delta; orientation = R(axis-angle delta) @ current orientation (delta
    applied on the left, i.e. about world axes). IK to that goal is seeded at the measured joints.
    Stateful only in the held goal orientation (see ``OscDeltaConfig``); call :meth:`reset` at
    the start of every episode, as robosuite resets its controller goal on env.reset().
    """

    def __init__(self, kinematics: PandaKinematics, config: OscDeltaConfig | None = None) -> None:
        self.kinematics = kinematics
        self.config = config if config is not None else OscDeltaConfig()
        self.goal_pos: np.ndarray | None = None
        self.goal_rot: np.ndarray | None = None
        self.last_ik: IkResult | None = None
        self.goals_clipped = 0  # goals moved into goal_box (counted over the converter's life)

    def reset(self) -> None:
        """Forget the held goal orientation (the next goal starts from the measured pose)."""
        self.goal_pos = None
        self.goal_rot = None
        self.last_ik = None

    def goal_pose(self, q_current: Any, action: Any) -> tuple[np.ndarray, np.ndarray]:
        """World-frame goal (pos, rot) robosuite's OSC would set for ``action`` at ``q_current``; no state change."""
        q = _vector(q_current, ARM_DOF, "q_current")
        a = _vector(action, ARM_DOF, "action (dx, dy, dz, dax, day, daz, gripper)")
        scaled = self.config.scale(a[:6])
        pos, rot = self.kinematics.fk(q)
        goal_pos = pos + scaled[:3]
        if np.any(scaled[3:] != 0.0) or self.goal_rot is None or not self.config.hold_orientation_on_zero_rotation:
            goal_rot = axis_angle_to_mat(scaled[3:]) @ rot
        else:
            goal_rot = self.goal_rot.copy()
        return goal_pos, goal_rot

    def convert(self, q_current: Any, action: Any) -> tuple[np.ndarray, float]:
        """(q_target (7,), gripper command in [-1, 1]: -1 open, +1 close, robosuite's PandaGripper sign).

        ``q_target`` is within the joint limits; if the goal is out of reach it is the closest
        IK iterate and ``last_ik.converged`` is False.
        """
        goal_pos, goal_rot = self.goal_pose(q_current, action)
        if self.config.goal_box_min is not None:
            kin = self.kinematics
            local = kin.base_rot.T @ (goal_pos - kin.base_pos)
            inside = np.clip(local, self.config.goal_box_min, self.config.goal_box_max)
            if np.any(inside != local):
                self.goals_clipped += 1
                goal_pos = kin.base_pos + kin.base_rot @ inside
        q = np.asarray(q_current, dtype=np.float64)
        result = self.kinematics.ik(goal_pos, goal_rot, q, max_iters=self.config.ik_max_iters, tol=self.config.ik_tol)
        self.goal_pos, self.goal_rot, self.last_ik = goal_pos, goal_rot, result
        gripper = float(np.clip(np.asarray(action, dtype=np.float64)[6], -1.0, 1.0))
        return result.q.copy(), gripper
