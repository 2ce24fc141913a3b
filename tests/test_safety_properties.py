"""Property-based adversaries for the safety layer (hypothesis, no ROS).

A random operator, a random (possibly broken) robot and a random (possibly hostile) policy act
on one SafetyLayer in any order: measurements with duplicated, missing or extra joint names,
NaN/inf, out-of-limit values, jumps and stamps skewed either way; camera frames stamped in the
future or repeated; enable/estop/reset at any time; policy chunks with any values and times.
Whatever happens, every trajectory the layer returns must be one a Franka may execute:

- every point inside the joint limits (minus the margin, unless the measured pose already is
  in the margin band: then never further out);
- every segment, including the one from where the trajectory starts, within the scaled
  velocity limit; every point reachable from the last accepted measurement at that limit;
- holds at the last accepted measurement; nothing but holds unless ENABLED with fresh data;
- a refused measurement never becomes the measured pose, and an accepted one is finite,
  distinct-named, inside the limits and not from the future.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from conftest import scale
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hardware.franka.limits import FR3
from hardware.safety import MEASURED_LIMIT_TOLERANCE_RAD, SafetyConfig, SafetyLayer, SafetyState

NAMES = list(FR3.joint_names)
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
CONFIG = SafetyConfig(
    cameras=("scene", "wrist"),
    smooth_start_s=0.3,
    stale_joint_state_s=0.1,
    stale_image_s=0.25,
    max_clock_skew_s=0.05,
    max_tracking_error_rad=0.1,
)
V_MAX = CONFIG.velocity_scale * FR3.dq_max
LO, HI = FR3.q_min + CONFIG.joint_margin_rad, FR3.q_max - CONFIG.joint_margin_rad
TOL = 1e-7

hostile_floats = st.one_of(
    st.floats(-4.0, 4.0),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e20, -3e38, 5e-324]),
)
clock_skews = st.one_of(
    st.floats(-0.3, 0.3),
    st.sampled_from([0.0, 0.049, 0.051, 0.3, -3600.0, 3600.0, float("nan")]),
)


def value_class(x: float) -> str:
    if not np.isfinite(x):
        return "NaN/inf"
    if abs(x) > 1e3:
        return "huge"
    return "in range" if FR3.q_min.min() <= x <= FR3.q_max.max() else "out of range"


def skew_class(skew: float) -> str:
    if not np.isfinite(skew):
        return "NaN"
    if skew > CONFIG.max_clock_skew_s:
        return "ahead beyond the skew"
    return "ahead within the skew" if skew > 0 else "behind or now"


class HostileWorld(RuleBasedStateMachine):
    """One safety layer, a clock, and a record of what was accepted and published."""

    @initialize()
    def start(self):
        self.layer = SafetyLayer(CONFIG)
        self.now = 10.0
        self.pose = FR3.home.copy()  # where the arm "really" is; measurements are derived from it
        self.accepted: tuple[np.ndarray, float] | None = None
        self.last_sent: np.ndarray | None = None

    # ---- the clock and the robot ----------------------------------------------------------------

    @rule(dt=st.floats(0.0005, 0.3))
    def time_passes(self, dt):
        self.now += dt
        self.layer.check_watchdog(self.now)

    def _observe(self, names, values, stamp) -> bool:
        before = self.layer.measured_pose
        ok = self.layer.observe_joint_state(names, values, stamp, self.now)
        after = self.layer.measured_pose
        if ok:
            q = np.asarray(values, dtype=np.float64)[[names.index(n) for n in NAMES]]
            assert len({n for n in names if n in NAMES}) == 7 and all(names.count(n) == 1 for n in NAMES)
            assert np.all(np.isfinite(q))
            assert np.all(q >= FR3.q_min - MEASURED_LIMIT_TOLERANCE_RAD)
            assert np.all(q <= FR3.q_max + MEASURED_LIMIT_TOLERANCE_RAD)
            assert stamp <= self.now + CONFIG.max_clock_skew_s
            np.testing.assert_array_equal(after, q)
            self.accepted = (q, self.layer.measured_stamp)
            assert self.accepted[1] <= self.now
        else:
            if before is None:
                assert after is None
            else:
                np.testing.assert_array_equal(after, before)
        return ok

    @rule(noise=st.floats(-0.01, 0.01), skew=st.floats(-0.02, 0.0))
    def good_measurement(self, noise, skew):
        self._observe(NAMES + FINGERS, [*(self.pose + noise), 0.04, 0.04], self.now + skew)

    @rule(age=st.floats(0.0, 0.02))
    def all_fresh(self, age):
        """A healthy robot: a joint state and a frame from each camera, just now."""
        self.good_measurement(0.0, -age)
        for camera in CONFIG.cameras:
            self.frame(camera, -age)

    @rule(age=st.floats(0.0, 0.02))
    def operator_enables_a_healthy_robot(self, age):
        self.all_fresh(age)
        self.enable()

    @rule(fraction=st.floats(0.0, 1.0))
    def the_arm_tracks(self, fraction):
        """The arm moves towards the last point it was sent, as a trajectory controller would."""
        if self.last_sent is not None:
            self.pose = self.pose + fraction * (self.last_sent - self.pose)

    @rule(
        joint=st.integers(0, 6),
        value=hostile_floats,
        skew=clock_skews,
        names=st.sampled_from(["ok", "duplicate", "missing", "shuffled", "extra"]),
        duplicate_value=hostile_floats,
    )
    def hostile_measurement(self, joint, value, skew, names, duplicate_value):
        q = self.pose.copy()
        q[joint] = value
        msg_names, values = list(NAMES), list(q)
        if names == "duplicate":
            msg_names.append(NAMES[joint])
            values.append(duplicate_value)
        elif names == "missing":
            del msg_names[joint], values[joint]
        elif names == "shuffled":
            order = list(reversed(range(7)))
            msg_names, values = [msg_names[i] for i in order], [values[i] for i in order]
        elif names == "extra":
            msg_names += FINGERS
            values += [0.04, duplicate_value]
        was_enabled = self.layer.state is SafetyState.ENABLED
        ok = self._observe(msg_names, values, self.now + skew)
        for kind in (f"names {names}", f"value {value_class(value)}", f"stamp {skew_class(skew)}"):
            event(f"joint state, {kind}: {'accepted' if ok else 'refused'}")
        if not ok and was_enabled and names in ("duplicate", "missing"):
            assert self.layer.state is not SafetyState.ENABLED, "a refused measurement must stop the motion"

    @rule(joint=st.integers(0, 6), jump=st.floats(-1.0, 1.0))
    def the_arm_moves(self, joint, jump):
        """The real arm jumps (a collision, someone pushes it, an encoder glitch)."""
        self.pose[joint] = float(np.clip(self.pose[joint] + jump, FR3.q_min[joint], FR3.q_max[joint]))

    @rule(camera=st.sampled_from(["scene", "wrist"]), skew=clock_skews)
    def frame(self, camera, skew):
        fresh = self.layer.observe_image(camera, self.now + skew, self.now)
        event(f"frame: stamp {skew_class(skew)}: {'fresh' if fresh else 'not fresh'}")
        if fresh:
            assert self.now + skew <= self.now + CONFIG.max_clock_skew_s

    # ---- the operator -------------------------------------------------------------------------------

    @rule()
    def enable(self):
        outcome = self.layer.enable(self.now)
        if outcome:
            assert self.layer.latched_reason is None

    @rule()
    def estop(self):
        self.layer.estop("operator", self.now)
        assert self.layer.state is SafetyState.ESTOP

    @rule()
    def reset(self):
        self.layer.reset(self.now)

    # ---- the policy ----------------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 8),
        values=st.lists(hostile_floats, max_size=8),
        spread=st.floats(0.0, 3.0),
        dt=st.sampled_from([0.05, 0.01, 0.2]),
        bad_times=st.booleans(),
    )
    def policy_chunk(self, n, values, spread, dt, bad_times):
        rng = np.random.default_rng(len(values) + n)
        points = self.pose + spread * rng.uniform(-1, 1, (n, 7))
        for i, v in enumerate(values):
            points[i % n, i % 7] = v
        times = dt * np.arange(1, n + 1)
        if bad_times and n > 1:
            times[-1] = times[0]
        state_before = self.layer.state
        safe = self.layer.filter_trajectory(NAMES, points, times, self.now)
        finite = "finite" if np.all(np.isfinite(points)) else "NaN/inf"
        event(
            f"policy chunk ({finite}, {'bad' if bad_times and n > 1 else 'ok'} times): "
            f"{'refused, hold' if safe is None else 'shaped'}"
        )
        if safe is None:
            if self.layer.measured_pose is not None:
                start = self.layer._commanded_state(self.now)[0]
                self._check_hold(self.layer.hold_trajectory(self.now), start)
            return
        assert state_before is SafetyState.ENABLED and self.layer.latched_reason is None
        assert np.all(np.isfinite(points)), "a chunk with NaN/inf was not refused"
        event("a trajectory was published")
        self._check_motion(safe)
        self.last_sent = safe.positions[0].copy()

    # ---- what reaches the arm ------------------------------------------------------------------------

    def _check_hold(self, hold, start=None):
        q, _ = self.accepted if self.accepted is not None else (None, None)
        assert hold.positions.shape == (1, 7)
        if start is not None:  # from the last setpoint within the velocity limit
            assert np.all(np.abs(hold.positions[0] - start) <= V_MAX * hold.times[0] * (1 + 1e-9) + TOL)
        assert np.all(hold.positions >= FR3.q_min) and np.all(hold.positions <= FR3.q_max)
        if q is not None:
            np.testing.assert_allclose(hold.positions[0], np.clip(q, FR3.q_min, FR3.q_max))

    def _check_motion(self, safe):
        assert self.accepted is not None
        q_measured, stamp = self.accepted
        p, t = safe.positions, safe.times
        assert np.all(np.isfinite(p)) and np.all(t > 0) and np.all(np.diff(t) > 0)
        # limits: inside the margin, or never further out than the measured pose already was
        assert np.all(p >= np.minimum(LO, q_measured) - TOL) and np.all(p <= np.maximum(HI, q_measured) + TOL)
        # reachable from the measured pose at the scaled velocity limit, point by point
        reach = V_MAX[None, :] * (self.now + t - stamp)[:, None]
        assert np.all(np.abs(p - q_measured[None, :]) <= reach + TOL), "a point the arm cannot reach in time"
        # within the velocity limit along the trajectory
        if len(p) > 1:
            velocity = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]
            assert np.all(velocity <= V_MAX[None, :] * (1 + 1e-9) + TOL), "a segment faster than the velocity limit"

    @invariant()
    def never_enabled_while_latched(self):
        if getattr(self, "layer", None) is not None and self.layer.latched_reason is not None:
            assert self.layer.state is not SafetyState.ENABLED


HostileWorld.TestCase.settings = settings(
    max_examples=scale(150, 2000),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHostileWorld = HostileWorld.TestCase


# --------------------------------------------------------------------------------------------------
# a running loop: fresh data every tick, a hostile policy and a robot that tracks, lags or jumps
# --------------------------------------------------------------------------------------------------

tick = st.fixed_dictionaries(
    {
        "chunk_offset": st.floats(-3.0, 3.0),
        "chunk_spread": st.floats(0.0, 1.0),
        "nan": st.integers(0, 9).map(lambda x: x == 0),
        "track": st.floats(0.0, 1.0),  # fraction of the way to the commanded point the arm gets
        "jump": st.one_of(st.just(0.0), st.just(0.0), st.just(0.0), st.floats(-0.8, 0.8)),
        "joint_state_age": st.floats(0.0, 0.09),
        "skew": st.one_of(st.just(0.0), st.just(0.0), st.just(0.0), st.floats(-0.2, 0.2)),
    }
)


@settings(max_examples=scale(120, 2000), deadline=None)
@given(ticks=st.lists(tick, min_size=5, max_size=40), seed=st.integers(0, 2**16))
def test_a_running_loop_only_ever_sends_reachable_in_limit_targets(ticks, seed):
    layer = SafetyLayer(dataclasses.replace(CONFIG, smooth_start_s=0.0))
    rng = np.random.default_rng(seed)
    now, pose = 1.0, FR3.home.copy()
    layer.observe_joint_state(NAMES, pose, now, now)
    for camera in CONFIG.cameras:
        layer.observe_image(camera, now, now)
    assert layer.enable(now)
    published = held = 0
    for step in ticks:
        now += CONFIG.control_dt
        pose = np.clip(pose + np.eye(7)[rng.integers(7)] * step["jump"], FR3.q_min, FR3.q_max)
        accepted = layer.observe_joint_state(NAMES, pose, now - step["joint_state_age"] + step["skew"], now)
        for camera in CONFIG.cameras:
            layer.observe_image(camera, now, now)
        if accepted:
            q_measured, stamp = layer.measured_pose, layer.measured_stamp
        points = pose + step["chunk_offset"] + step["chunk_spread"] * rng.uniform(-1, 1, (8, 7))
        if step["nan"]:
            points[rng.integers(8), rng.integers(7)] = np.nan
        safe = layer.filter_trajectory(NAMES, points, CONFIG.control_dt * np.arange(1, 9), now)
        if safe is None:
            hold = layer.hold_trajectory(now)
            np.testing.assert_array_equal(hold.positions[0], layer.measured_pose)
            held += 1
            layer.reset(now) if layer.latched_reason else None
            layer.enable(now)
            continue
        published += 1
        q_measured, stamp = layer.measured_pose, layer.measured_stamp
        p, t = safe.positions, safe.times
        assert np.all(p >= np.minimum(LO, q_measured) - TOL) and np.all(p <= np.maximum(HI, q_measured) + TOL)
        reach = V_MAX[None, :] * (now + t - stamp)[:, None]
        assert np.all(np.abs(p - q_measured[None, :]) <= reach + TOL), "a point the arm cannot reach in time"
        velocity = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]
        assert np.all(velocity <= V_MAX[None, :] * (1 + 1e-9) + TOL)
        pose = pose + step["track"] * (p[0] - pose)
    event(f"published {10 * (10 * published // (published + held + 1))}%+ of ticks")


def test_events_are_numbered_so_each_is_published_once():
    layer = SafetyLayer(CONFIG)
    seen: list[int] = []
    last = 0
    for i in range(700):  # more than the 256 kept: a slow reader learns how many it missed
        layer.refuse(float(i), "refused_shape", f"#{i}")
        if i % 100 == 99 or i == 699:
            events, lost = layer.events_after(last)
            if i < 256:
                assert lost == 0
            seen += [e.seq for e in events]
            last = events[-1].seq
            assert lost == 0 or events[0].seq == last - len(events) + 1
    assert seen == sorted(set(seen)), "an event was delivered twice or out of order"
    assert layer.events_after(last) == ([], 0)
