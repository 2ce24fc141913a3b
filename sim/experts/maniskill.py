"""Scripted state-machine experts for ManiSkill Panda tasks (``pd_ee_delta_pose`` control).

They read privileged object poses from ``env.raw`` (the unwrapped ManiSkill env, one CPU
scene) and servo the TCP towards way-points. The action is ``[dx dy dz drx dry drz grip]``
in [-1, 1]: ManiSkill scales the position part by the arm controller's ``pos_upper``
(0.1 m) and the rotation part by its ``rot_lower`` (-0.1 rad for the Panda, so the sign is
flipped) and applies both in the robot base frame (axis-aligned with the world here), around
the current TCP pose. Gripper +1 opens, -1 closes.

Experts expect one CPU scene (``sim.maniskill.ManiSkillEnv``; batch index 0 is read) and
must be ``reset`` at the start of every episode. Measured success (100 episodes each, seed 0,
``make_env(..., num_envs=2).expert_actions()``): PickCube 100%, PushCube 100%, StackCube
96%, PegInsertionSide 96%.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

OPEN, CLOSE = 1.0, -1.0
# TCP pointing straight down with its x axis along world +x (the Panda's home orientation)
_DOWN = np.diag([1.0, -1.0, -1.0])


def _np(x) -> np.ndarray:
    return x[0].detach().cpu().numpy().astype(np.float64)


def _pose(actor_pose) -> tuple[np.ndarray, Rotation]:
    """(position, rotation) of a ManiSkill Pose of batch size 1."""
    raw = _np(actor_pose.raw_pose)
    return raw[:3], Rotation.from_quat(raw[3:], scalar_first=True)


def _yaw(rot: Rotation) -> float:
    m = rot.as_matrix()
    return float(np.arctan2(m[1, 0], m[0, 0]))


def _down_rotation(yaw: float) -> Rotation:
    """TCP pointing down, rotated by ``yaw`` about world z (its x axis at ``yaw``)."""
    return Rotation.from_rotvec([0.0, 0.0, yaw]) * Rotation.from_matrix(_DOWN)


def _closest_yaw(target: float, current: float, period: float) -> float:
    """The yaw equivalent to ``target`` modulo ``period`` that is closest to ``current``."""
    return current + float((target - current + period / 2) % period - period / 2)


class _PandaExpert:
    """Shared servoing: a P controller on TCP position and orientation."""

    # closed-loop P control on TCP position: noise on these dims gets corrected (DART)
    servoed_action_dims = (0, 1, 2)

    pos_gain = 1.5
    rot_gain = 1.2
    max_pos = 0.5  # largest normalized position command (big IK deltas can fail)

    def __init__(self, task: str):
        self.task = task
        self.stage = 0
        self.count = 0
        self.scale, self._last = 1.0, None

    def _ik_scale(self, tcp_p: np.ndarray) -> float:
        """Shrink commands while the arm does not follow them.

        ManiSkill's CPU IK gives up on some large delta poses near the edge of the workspace
        and then holds the arm still; smaller steps from the same state do get solved.
        """
        if self._last is not None:
            last_p, last_cmd = self._last
            moved = float(np.dot(tcp_p - last_p, last_cmd) / max(np.linalg.norm(last_cmd), 1e-9))
            if np.linalg.norm(last_cmd) > 0.01 and moved < 0.1 * np.linalg.norm(last_cmd):
                self.scale = max(self.scale * 0.5, 0.125)
            else:
                self.scale = min(self.scale * 1.5, 1.0)
        return self.scale

    def reset(self, env) -> None:
        arm = env.raw.agent.controller.controllers["arm"]
        self.pos_scale = float(np.max(np.abs(arm.config.pos_upper)))
        self.rot_scale = float(np.atleast_1d(arm.config.rot_lower)[0])  # signed: actual = rot_scale * action
        self.stage, self.count = 0, 0
        self.scale, self._last = 1.0, None
        self.start(env)

    def start(self, env) -> None:  # per-episode set-up of a task
        pass

    def tcp(self, env) -> tuple[np.ndarray, Rotation]:
        return _pose(env.raw.agent.tcp.pose)

    def next_stage(self) -> None:
        self.stage += 1
        self.count = 0

    def servo(self, env, pos, rot: Rotation | None, grip: float, max_pos: float | None = None) -> np.ndarray:
        tcp_p, tcp_r = self.tcp(env)
        action = np.zeros(7)
        v = (np.asarray(pos) - tcp_p) / self.pos_scale * self.pos_gain
        cap = self.max_pos if max_pos is None else max_pos
        peak = np.abs(v).max()
        if peak > cap:
            v *= cap / peak
        action[:3] = v
        if rot is not None:
            err = (rot * tcp_r.inv()).as_rotvec()  # world-frame rotation still to do
            w = err / self.rot_scale * self.rot_gain
            norm = np.linalg.norm(w)
            if norm > 1.0:
                w /= norm
            action[3:6] = w
        scale = self._ik_scale(tcp_p)
        action[:6] *= scale
        self._last = (tcp_p, action[:3] * self.pos_scale)
        action[6] = grip
        self.count += 1
        return action.astype(np.float32)

    def errors(self, env, pos, rot: Rotation | None = None) -> tuple[float, float]:
        tcp_p, tcp_r = self.tcp(env)
        pos_err = float(np.linalg.norm(np.asarray(pos) - tcp_p))
        rot_err = 0.0 if rot is None else float(np.linalg.norm((rot * tcp_r.inv()).as_rotvec()))
        return pos_err, rot_err

    def grasp_rotation(self, env, obj_rot: Rotation, period: float = np.pi / 2) -> Rotation:
        """Pointing down, fingers across the object's x/y faces, with the least wrist turn."""
        current = _yaw(self.tcp(env)[1] * Rotation.from_matrix(_DOWN).inv())
        return _down_rotation(_closest_yaw(_yaw(obj_rot), current, period))


class _PickPlaceMixin:
    """Approach above an object, descend and close; the task's own stages follow (stage >= 3)."""

    hover = 0.06

    def pick(self, env, obj) -> np.ndarray | None:
        """Returns an action while picking, None once the object is held."""
        obj_p, obj_r = _pose(obj.pose)
        if self.stage == 0:  # open, orient, go above the object
            self.grasp_rot = self.grasp_rotation(env, obj_r)
            target = obj_p + [0, 0, self.hover]
            pos_err, rot_err = self.errors(env, target, self.grasp_rot)
            if (pos_err < 0.015 and rot_err < 0.08) or self.count > 25:
                self.next_stage()
            else:
                return self.servo(env, target, self.grasp_rot, OPEN)
        if self.stage == 1:  # straight down onto it
            target = obj_p.copy()
            pos_err, _ = self.errors(env, target)
            if pos_err < 0.006 or self.count > 12:
                self.next_stage()
            else:
                return self.servo(env, target, self.grasp_rot, OPEN, max_pos=0.5)
        if self.stage == 2:  # close
            if (self.count >= 3 and bool(env.raw.agent.is_grasping(obj)[0])) or self.count > 6:
                self.next_stage()
            else:
                return self.servo(env, self.tcp(env)[0], None, CLOSE)
        return None


class PickCubeExpert(_PandaExpert, _PickPlaceMixin):
    """Grasp the cube and carry it to the goal site, then hold still (success needs a static robot)."""

    def act(self, env) -> np.ndarray:
        raw = env.raw
        action = self.pick(env, raw.cube)
        if action is not None:
            return action
        cube_p, _ = _pose(raw.cube.pose)
        goal = _np(raw.goal_site.pose.p)
        tcp_p, _ = self.tcp(env)
        target = goal + (tcp_p - cube_p)  # put the cube centre, not the TCP, on the goal
        if self.stage == 3 and (np.linalg.norm(goal - cube_p) < 0.008):
            self.next_stage()
        if self.stage == 4:  # settle: small corrections only
            return self.servo(env, target, self.grasp_rot, CLOSE, max_pos=0.05)
        return self.servo(env, target, self.grasp_rot, CLOSE)


class PushCubeExpert(_PandaExpert):
    """Closed gripper behind the cube, lowered to the table, pushed along +x into the target."""

    def act(self, env) -> np.ndarray:
        raw = env.raw
        cube_p, _ = _pose(raw.obj.pose)
        goal = _np(raw.goal_region.pose.p)
        half = float(raw.cube_half_size)
        rot = _down_rotation(0.0)
        behind = cube_p + [-(half + 0.035), 0.0, 0.0]
        if self.stage == 0:  # above the spot behind the cube
            target = behind + [0, 0, 0.05]
            if self.errors(env, target)[0] < 0.015 or self.count > 20:
                self.next_stage()
            else:
                return self.servo(env, target, rot, CLOSE)
        if self.stage == 1:  # down to pushing height
            target = behind.copy()
            target[2] = half * 0.8
            if self.errors(env, target)[0] < 0.008 or self.count > 12:
                self.next_stage()
            else:
                return self.servo(env, target, rot, CLOSE, max_pos=0.6)
        # push: keep the TCP on the line through the cube towards the goal, at pushing height
        target = np.array([goal[0] - half + 0.01, cube_p[1], half * 0.8])
        return self.servo(env, target, rot, CLOSE, max_pos=0.35)


class StackCubeExpert(_PandaExpert, _PickPlaceMixin):
    """Pick cube A, carry it above cube B, lower it on top, release and back off."""

    def act(self, env) -> np.ndarray:
        raw = env.raw
        action = self.pick(env, raw.cubeA)
        if action is not None:
            return action
        a_p, _ = _pose(raw.cubeA.pose)
        b_p, b_r = _pose(raw.cubeB.pose)
        tcp_p, _ = self.tcp(env)
        offset = tcp_p - a_p
        side = 0.04  # cube edge
        if self.stage == 3:  # lift and carry above B
            target = b_p + [0, 0, side + 0.04] + offset
            if np.linalg.norm(target - tcp_p) < 0.01 or self.count > 25:
                self.next_stage()
            else:
                return self.servo(env, target, self.grasp_rot, CLOSE)
        if self.stage == 4:  # lower onto B
            target = b_p + [0, 0, side + 0.002] + offset
            if np.linalg.norm(a_p - (b_p + [0, 0, side])) < 0.006 or self.count > 12:
                self.next_stage()
            else:
                return self.servo(env, target, self.grasp_rot, CLOSE, max_pos=0.4)
        if self.stage == 5:  # open in place
            if self.count >= 3:
                self.next_stage()
            else:
                return self.servo(env, tcp_p, None, OPEN)
        # back off upwards and stay open
        target = np.array([tcp_p[0], tcp_p[1], b_p[2] + side + 0.08])
        return self.servo(env, target, None, OPEN, max_pos=0.4)


class PegInsertionSideExpert(_PandaExpert):
    """Grasp the peg behind its centre, bring it in line with the hole, then push it in.

    Once grasped, every target is a desired *peg* pose, turned into a TCP target through the
    peg-to-TCP transform measured at each step, so slip in the grasp is corrected.
    """

    def start(self, env) -> None:
        raw = env.raw
        self.half_len = float(_np(raw.peg_half_sizes)[0])
        self.radius = float(_np(raw.peg_half_sizes)[1])

    def _tcp_target_for_peg(self, env, peg_p, peg_r: Rotation) -> tuple[np.ndarray, Rotation]:
        cur_peg_p, cur_peg_r = _pose(env.raw.peg.pose)
        tcp_p, tcp_r = self.tcp(env)
        rel_r = cur_peg_r.inv() * tcp_r  # TCP in the peg frame
        rel_p = cur_peg_r.inv().apply(tcp_p - cur_peg_p)
        return peg_p + peg_r.apply(rel_p), peg_r * rel_r

    def act(self, env) -> np.ndarray:
        raw = env.raw
        peg_p, peg_r = _pose(raw.peg.pose)
        if self.stage <= 2:
            peg_x = peg_r.apply([1.0, 0.0, 0.0])
            grasp_point = peg_p - peg_x * (0.6 * self.half_len)  # towards the tail: hand clear of the box
            if self.stage == 0:
                current = _yaw(self.tcp(env)[1] * Rotation.from_matrix(_DOWN).inv())
                self.grasp_rot = _down_rotation(_closest_yaw(_yaw(peg_r), current, np.pi))
                target = grasp_point + [0, 0, 0.06]
                pos_err, rot_err = self.errors(env, target, self.grasp_rot)
                if (pos_err < 0.015 and rot_err < 0.05) or self.count > 35:
                    self.next_stage()
                else:
                    return self.servo(env, target, self.grasp_rot, OPEN)
            if self.stage == 1:
                target = grasp_point.copy()
                if self.errors(env, target)[0] < 0.005 or self.count > 12:
                    self.next_stage()
                else:
                    return self.servo(env, target, self.grasp_rot, OPEN, max_pos=0.5)
            if self.stage == 2:
                if (self.count >= 4 and bool(raw.agent.is_grasping(raw.peg)[0])) or self.count > 7:
                    self.next_stage()
                else:
                    return self.servo(env, self.tcp(env)[0], None, CLOSE)
        hole_p, hole_r = _pose(raw.box_hole_pose)
        hole_x = hole_r.apply([1.0, 0.0, 0.0])
        head_p = peg_p + peg_r.apply([self.half_len, 0.0, 0.0])
        # head position in the hole frame: x along the insertion axis, y/z across it
        head_in_hole = hole_r.inv().apply(head_p - hole_p)
        if self.stage == 3:  # lift clear of the table, already turning towards the hole axis
            _, turn = self._tcp_target_for_peg(env, peg_p, hole_r)
            target = self.tcp(env)[0].copy()
            target[2] = max(target[2], hole_p[2], self.radius + 0.06)
            if abs(self.tcp(env)[0][2] - target[2]) < 0.02 or self.count > 8:
                self.next_stage()
                self.lateral = np.zeros(2)
            else:
                return self.servo(env, target, turn, CLOSE)
        # From here on the peg is steered on the hole axis. The arm sags under the load, so
        # the remaining sideways error (hole frame y/z) is integrated into the target.
        if abs(head_in_hole[0]) < 0.15:
            self.lateral = np.clip(self.lateral + 0.5 * head_in_hole[1:], -0.01, 0.01)
        correction = -hole_r.apply([0.0, *(head_in_hole[1:] + self.lateral)])
        if self.stage == 4:  # line up in front of the hole: head a few cm outside the entrance
            standoff = self.half_len + 0.04
            want_p = hole_p - hole_x * (standoff + self.half_len)
            tcp_p, tcp_r = self._tcp_target_for_peg(env, want_p, hole_r)
            yz_err = np.linalg.norm(head_in_hole[1:])
            peg_axis_err = np.linalg.norm((hole_r * peg_r.inv()).as_rotvec())
            if (yz_err < 0.002 and peg_axis_err < 0.02 and head_in_hole[0] < -self.half_len) or self.count > 45:
                self.next_stage()
            else:
                return self.servo(env, tcp_p + correction, tcp_r, CLOSE, max_pos=0.6)
        # insert: slide along the hole axis (past the success depth) holding y/z on the axis
        outside = head_in_hole[0] < -self.half_len + 0.005
        step = 0.0 if outside and np.linalg.norm(head_in_hole[1:]) > 0.0015 else 0.02  # wait to re-centre
        depth = min(head_in_hole[0] + step, 0.01)
        want_p = hole_p + hole_x * (depth - self.half_len)
        tcp_p, tcp_r = self._tcp_target_for_peg(env, want_p, hole_r)
        return self.servo(env, tcp_p + correction, tcp_r, CLOSE, max_pos=0.25)


EXPERTS = {
    "PickCube-v1": PickCubeExpert,
    "PushCube-v1": PushCubeExpert,
    "StackCube-v1": StackCubeExpert,
    "PegInsertionSide-v1": PegInsertionSideExpert,
}
