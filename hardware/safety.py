"""The safety layer between a policy and a Franka joint trajectory controller (no ROS inside).

A policy's joint targets pass through `SafetyLayer.filter_trajectory` before anything is sent:
bad input is refused and the arm holds, good input is clipped to the joint limits, rate and
acceleration limited, checked against a Cartesian workspace box, and blended in from the
measured pose right after enabling. Stale sensor data, e-stops and refusals move the state
machine away from ENABLED; stale data and e-stops latch until an explicit `reset()`.

Every time is a float in seconds from one monotonic clock that the caller passes in, so the
ROS node uses its clock and the tests drive time by hand.

Choices (documented because the brief let us pick):
- max_step_rad bounds the change between consecutive trajectory points (per point, whatever
  the spacing), measured from the setpoint the previous trajectory commands at `now`.
- Velocity and max-step violations scale the whole joint-space step (direction kept);
  acceleration violations clamp each joint's finite-difference velocity to
  v_prev +- accel_scale * ddq_max * dt. Times are never stretched, so a trajectory keeps the
  timing the policy asked for and lags behind it instead. Position limits win over all others.
- Finite differences: v_i = (q_i - q_{i-1}) / dt_i, a_i = (v_i - v_{i-1}) / dt_i,
  j_i = (a_i - a_{i-1}) / dt_i with dt_i = t_i - t_{i-1} (the same in `check_limits`).
- Near a position limit the speed towards it is capped so the arm can still stop before it
  within the acceleration limit (`braking_speed`), instead of hitting the clip at speed.
- Jerk is only reported by `check_limits`, not enforced: the trajectory controller splines
  between points at 1 kHz.

Hostile input (each rule has a property test in tests/test_safety_properties.py):
- A measurement is refused, and the arm holds, when it names an arm joint twice, is not finite,
  lies outside the joint limits (a sensor fault or the wrong robot table: latched), or carries a
  stamp more than `max_clock_skew_s` ahead of the caller's clock (two clocks mixed). A stamp
  within the skew counts as `now`; a stamp not newer than the last one is ignored (not fresh), so
  a frozen stream that repeats its stamp goes stale. Image stamps follow the same rules, so a
  camera stamping its frames in the future cannot keep the watchdog fed.
- Measured and commanded must agree: while commanding, a measurement further than
  `max_tracking_error_rad` from the setpoint commanded at its stamp latches a fault (collision,
  reflex, a pushed arm, a jumping encoder).
- Every point is reachable from the measured pose: a trajectory starts from the commanded
  setpoint (continuity), but that start is first pulled into the set the arm can have reached
  since its measurement at the scaled velocity limit, so point i lies within
  velocity_scale * dq_max * (now + t_i - stamp) of the measured pose (counted as `reanchored`).
- Holds command the last accepted measured pose (always inside the joint limits).
- Every event carries a sequence number, so a publisher can send each exactly once
  (`events_after`).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hardware.franka.limits import ROBOTS, JointLimits

log = logging.getLogger("hardware.safety")

# A measured position may exceed the joint-limit table by this much (encoder resolution at a
# limit); beyond it the measurement is refused and latched as a fault.
MEASURED_LIMIT_TOLERANCE_RAD = 0.005

Fk = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# config, events, results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetyConfig:
    """Limits the safety layer enforces on top of the robot's own joint limits."""

    robot: str = field(
        default="fr3",
        metadata={"help": "joint-limit table, a name in the registry hardware.franka.limits.ROBOTS (fr3, panda)"},
    )
    velocity_scale: float = field(default=0.5, metadata={"help": "fraction of dq_max allowed, in (0, 1]"})
    accel_scale: float = field(default=0.5, metadata={"help": "fraction of ddq_max allowed, in (0, 1]"})
    max_step_rad: float = field(default=0.05, metadata={"help": "max joint change between trajectory points (rad)"})
    workspace_min: tuple[float, float, float] = field(
        default=(0.2, -0.6, 0.02),
        metadata={"help": "lower xyz corner of the box the end effector must stay in (robot base frame, m)"},
    )
    workspace_max: tuple[float, float, float] = field(
        default=(0.85, 0.6, 0.9), metadata={"help": "upper xyz corner of the end-effector box (robot base frame, m)"}
    )
    joint_margin_rad: float = field(default=0.05, metadata={"help": "distance kept from q_min/q_max (rad)"})
    stale_joint_state_s: float = field(
        default=0.1,
        metadata={"help": "a joint state older than this while enabled holds the arm, latched until reset (s)"},
    )
    stale_image_s: float = field(
        default=0.25,
        metadata={
            "help": "an image of a watched camera older than this while enabled holds the arm, latched until reset (s)"
        },
    )
    smooth_start_s: float = field(default=2.0, metadata={"help": "blend from the measured pose after enable (s)"})
    control_dt: float = field(default=0.05, metadata={"help": "the policy's control period (s)"})
    cameras: tuple[str, ...] = field(default=(), metadata={"help": "camera names the watchdog requires fresh"})
    max_events: int = field(default=256, metadata={"help": "safety events kept for inspection (oldest dropped)"})
    max_clock_skew_s: float = field(
        default=0.05,
        metadata={
            "help": "a joint-state or image stamp further than this ahead of the node's clock is refused (two clocks "
            "mixed); within it the stamp counts as now (s)"
        },
    )
    max_tracking_error_rad: float = field(
        default=0.1,
        metadata={
            "help": "largest per-joint distance between the measured pose and the setpoint commanded at its stamp; "
            "beyond it the arm holds, latched (rad)"
        },
    )

    def __post_init__(self) -> None:
        limits = ROBOTS.get(self.robot)  # unknown robot -> error listing fr3, panda
        for name in ("velocity_scale", "accel_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise ValueError(f"SafetyConfig.{name} must be in (0, 1], got {value}")
        for name in (
            "max_step_rad",
            "stale_joint_state_s",
            "stale_image_s",
            "control_dt",
            "max_clock_skew_s",
            "max_tracking_error_rad",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"SafetyConfig.{name} must be a positive finite number, got {value}")
        if not (math.isfinite(self.smooth_start_s) and self.smooth_start_s >= 0.0):
            raise ValueError(f"SafetyConfig.smooth_start_s must be >= 0, got {self.smooth_start_s}")
        half_range = float(np.min(limits.q_max - limits.q_min)) / 2
        if not (math.isfinite(self.joint_margin_rad) and 0.0 <= self.joint_margin_rad < half_range):
            raise ValueError(
                f"SafetyConfig.joint_margin_rad must be in [0, {half_range:.4f}) for {self.robot}, "
                f"got {self.joint_margin_rad}"
            )
        lo = np.asarray(self.workspace_min, dtype=np.float64)
        hi = np.asarray(self.workspace_max, dtype=np.float64)
        if lo.shape != (3,) or hi.shape != (3,):
            raise ValueError(
                f"workspace_min/workspace_max must be xyz triples, got {self.workspace_min}, {self.workspace_max}"
            )
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise ValueError(
                f"need finite workspace_min < workspace_max, got {self.workspace_min} .. {self.workspace_max}"
            )
        object.__setattr__(self, "workspace_min", tuple(float(v) for v in lo))
        object.__setattr__(self, "workspace_max", tuple(float(v) for v in hi))
        cameras = tuple(self.cameras)
        if any(not isinstance(c, str) or not c for c in cameras) or len(set(cameras)) != len(cameras):
            raise ValueError(f"SafetyConfig.cameras must be distinct non-empty names, got {cameras}")
        object.__setattr__(self, "cameras", cameras)
        if self.max_events < 1:
            raise ValueError(f"SafetyConfig.max_events must be >= 1, got {self.max_events}")


class SafetyState(enum.StrEnum):
    DISABLED = "disabled"  # initial; nothing is commanded
    ENABLED = "enabled"  # policy targets pass (filtered)
    HOLD = "hold"  # a fault: hold the measured pose; enable() again (or reset() if latched)
    ESTOP = "estop"  # latched by estop(); only reset() clears it


@dataclass(frozen=True)
class SafetyEvent:
    time: float
    kind: str
    detail: str
    seq: int = 0  # 1, 2, 3, ... in the order recorded: publish each exactly once (events_after)


@dataclass(frozen=True)
class Outcome:
    """Result of a request such as enable(): truthy only when it succeeded (maps to a Trigger reply)."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, eq=False)
class SafeTrajectory:
    """What may be sent to the trajectory controller: robot joint order, times from `now`."""

    names: tuple[str, ...]
    positions: np.ndarray  # (N, 7)
    times: np.ndarray  # (N,) seconds from start, strictly increasing, > 0
    modifications: list[str]


# --------------------------------------------------------------------------------------------------
# pure math
# --------------------------------------------------------------------------------------------------


def smoothstep(x: float) -> float:
    """3x^2 - 2x^3 on [0, 1]: starts and ends with zero velocity."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def smooth_start_blend(q_start: np.ndarray, q_target: np.ndarray, elapsed: float, duration: float) -> np.ndarray:
    """The target blended in from q_start: exactly q_start at elapsed 0, q_target from `duration` on."""
    if duration <= 0.0:
        return np.array(q_target, dtype=np.float64)
    alpha = smoothstep(elapsed / duration)
    q_start = np.asarray(q_start, dtype=np.float64)
    return q_start + alpha * (np.asarray(q_target, dtype=np.float64) - q_start)


def braking_speed(distance: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """Largest speed towards a limit `distance` away that still stops before it.

    Stopping from speed v with velocity steps of accel*dt covers at most v^2/(2 accel) + v*dt,
    so v = -accel*dt + sqrt((accel*dt)^2 + 2*accel*distance); one step later the bound has
    dropped by less than accel*dt, so braking never needs more than the acceleration limit.
    """
    a_dt = accel * dt
    return -a_dt + np.sqrt(a_dt * a_dt + 2.0 * accel * np.asarray(distance, dtype=np.float64))


def _finite_differences(positions: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dt = np.diff(times)
    vel = np.diff(positions, axis=0) / dt[:, None]
    acc = np.diff(vel, axis=0) / dt[1:, None]
    jerk = np.diff(acc, axis=0) / dt[2:, None]
    return vel, acc, jerk


def check_limits(
    positions: np.ndarray,
    times: np.ndarray,
    limits: JointLimits,
    scale: float = 1.0,
    *,
    accel_scale: float | None = None,
    jerk_scale: float | None = None,
    start: np.ndarray | None = None,
    tol: float = 1e-9,
) -> list[str]:
    """Violations of position / velocity / acceleration / jerk limits by finite differences.

    `scale` multiplies dq_max (and ddq_max, jerk_max unless given their own scale). With
    `start`, the pose at time 0 is prepended, so `times` are then seconds from that start.
    Returns one readable line per violated (kind, joint); empty means within limits.
    """
    q = np.asarray(positions, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != len(limits.joint_names):
        raise ValueError(f"positions must be (N, {len(limits.joint_names)}), got {q.shape}")
    if t.shape != (q.shape[0],):
        raise ValueError(f"times must be ({q.shape[0]},), got {t.shape}")
    if start is not None:
        s = np.asarray(start, dtype=np.float64).reshape(1, -1)
        if s.shape[1] != q.shape[1]:
            raise ValueError(f"start must have {q.shape[1]} values, got {s.shape[1]}")
        q = np.concatenate([s, q])
        t = np.concatenate([[0.0], t])
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise ValueError("positions and times must be finite")
    if np.any(np.diff(t) <= 0):
        raise ValueError("times must be strictly increasing")
    a_scale = scale if accel_scale is None else accel_scale
    j_scale = scale if jerk_scale is None else jerk_scale
    vel, acc, jerk = _finite_differences(q, t)
    report: list[str] = []

    def over(kind: str, values: np.ndarray, bound: np.ndarray, unit: str) -> None:
        if values.size == 0:
            return
        worst = np.max(np.abs(values), axis=0)
        for j in np.flatnonzero(worst > bound * (1 + tol) + tol):
            report.append(f"{kind}: {limits.joint_names[j]} |{worst[j]:.4g}| > {bound[j]:.4g} {unit}")

    for j in range(q.shape[1]):
        lo, hi = q[:, j].min(), q[:, j].max()
        if lo < limits.q_min[j] - tol or hi > limits.q_max[j] + tol:
            report.append(
                f"position: {limits.joint_names[j]} range [{lo:.4f}, {hi:.4f}] outside "
                f"[{limits.q_min[j]:.4f}, {limits.q_max[j]:.4f}] rad"
            )
    over("velocity", vel, scale * limits.dq_max, "rad/s")
    over("acceleration", acc, a_scale * limits.ddq_max, "rad/s^2")
    over("jerk", jerk, j_scale * limits.jerk_max, "rad/s^3")
    return report


# --------------------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------------------


@dataclass
class _Commanded:
    """The last trajectory sent: knots (times from `start_time`, the first knot is the start pose)."""

    start_time: float
    times: np.ndarray  # (N+1,) starting with 0
    positions: np.ndarray  # (N+1, 7) starting with the setpoint at start_time

    def at(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Setpoint and velocity this trajectory commands at `now` (linear between knots)."""
        t = now - self.start_time
        if t >= self.times[-1]:
            return self.positions[-1].copy(), np.zeros(self.positions.shape[1])
        if t <= 0.0:
            seg = 1
        else:
            seg = int(np.searchsorted(self.times, t, side="right"))
        t0, t1 = self.times[seg - 1], self.times[seg]
        q0, q1 = self.positions[seg - 1], self.positions[seg]
        vel = (q1 - q0) / (t1 - t0)
        return q0 + vel * (max(t, 0.0) - t0), vel


class SafetyLayer:
    """Guards every joint target sent to the arm; see the module docstring for the rules.

    `fk` maps q (7,) in robot joint order to the end-effector xyz (3,) in the base frame; without
    it the workspace box is not checked (describe() says so). Thread-safe: the ROS node calls it
    from subscription callbacks, the control timer and service handlers.
    """

    def __init__(self, config: SafetyConfig | None = None, fk: Fk | None = None):
        self.config = config or SafetyConfig()
        self.limits: JointLimits = ROBOTS.get(self.config.robot)
        self.fk = fk
        self.events: deque[SafetyEvent] = deque(maxlen=self.config.max_events)
        self.counters: dict[str, int] = {}
        self._lock = threading.RLock()
        self._state = SafetyState.DISABLED
        self._latched: str | None = None
        self._q_measured: np.ndarray | None = None
        self._q_stamp: float | None = None
        self._image_stamps: dict[str, float] = {}
        self._enable_time: float | None = None
        self._start_pose: np.ndarray | None = None
        self._history: deque[_Commanded] = deque(maxlen=32)  # recent commands, newest last (the one in force)
        self._event_seq = 0
        self._last_logged: dict[str, float] = {}
        self.max_tracking_error = 0.0  # the largest |measured - commanded| seen while commanding (rad)
        margin = self.config.joint_margin_rad
        self._lo = self.limits.q_min + margin
        self._hi = self.limits.q_max - margin
        self._v_max = self.config.velocity_scale * self.limits.dq_max
        self._a_max = self.config.accel_scale * self.limits.ddq_max

    # ---- properties ------------------------------------------------------------------------------

    @property
    def state(self) -> SafetyState:
        return self._state

    @property
    def latched_reason(self) -> str | None:
        return self._latched

    @property
    def measured_pose(self) -> np.ndarray | None:
        with self._lock:
            return None if self._q_measured is None else self._q_measured.copy()

    @property
    def measured_stamp(self) -> float | None:
        """The stamp of the accepted measurement (never ahead of the clock it was checked against)."""
        return self._q_stamp

    # ---- bookkeeping -------------------------------------------------------------------------------

    def _record(self, now: float, kind: str, detail: str, level: int = logging.DEBUG) -> None:
        self._event_seq += 1
        self.events.append(SafetyEvent(float(now), kind, detail, self._event_seq))
        self.counters[kind] = self.counters.get(kind, 0) + 1
        if level > logging.NOTSET:
            log.log(level, "%s: %s", kind, detail)

    def _record_throttled(self, now: float, kind: str, detail: str, key: str = "", period_s: float = 1.0) -> None:
        """Count every occurrence, but record (and log) an event at most once per period per
        (kind, key): a 100 Hz stream of bad messages must not flood the event log and push the
        cause out of it, while a different cause still shows at once."""
        last = self._last_logged.get(kind + "/" + key)
        if last is not None and 0.0 <= now - last < period_s:
            self.counters[kind] = self.counters.get(kind, 0) + 1
            return
        self._last_logged[kind + "/" + key] = now
        self._record(now, kind, detail, logging.WARNING)

    def report(self, now: float, kind: str, detail: str) -> None:
        """Record a condition the caller found (e.g. why no chunk comes) without holding; repeated
        reports of one kind become one event per second."""
        with self._lock:
            self._record_throttled(now, kind, detail, detail[:60])

    def events_after(self, seq: int) -> tuple[list[SafetyEvent], int]:
        """Events recorded after sequence number `seq`, and how many of those were already dropped
        from the bounded log (a publisher that fell that far behind reports the loss)."""
        with self._lock:
            new = [e for e in self.events if e.seq > seq]
            first = new[0].seq if new else self._event_seq + 1
            return new, max(0, first - seq - 1)

    def _refuse(
        self, now: float, kind: str, detail: str, *, hold: bool = True, throttle_key: str | None = None
    ) -> None:
        """Record and log one refusal; an ENABLED layer drops to HOLD (it never keeps moving on bad data).
        With `throttle_key`, a refusal that repeats with every message of a stream is one event per
        second per key (the counter still counts each)."""
        if throttle_key is not None:
            self._record_throttled(now, kind, detail, throttle_key)
        else:
            self._record(now, kind, detail, logging.WARNING)
        if hold and self._state is SafetyState.ENABLED:
            self._state = SafetyState.HOLD
            self._record(now, "hold", f"holding after {kind}", logging.WARNING)

    def _refuse_measurement(self, now: float, reason: str, detail: str) -> None:
        self._refuse(now, "bad_joint_state", detail, throttle_key=reason)

    def refuse(self, now: float, kind: str, detail: str, throttle_key: str | None = None) -> None:
        """Refuse something the caller checked itself (e.g. a NaN chunk before it becomes joint targets)."""
        with self._lock:
            self._refuse(now, kind, detail, throttle_key=throttle_key)

    def _latch(self, now: float, kind: str, reason: str) -> None:
        self._latched = reason
        if self._state is SafetyState.ENABLED:
            self._state = SafetyState.HOLD
        self._record(now, kind, f"latched: {reason}", logging.ERROR)

    # ---- inputs ------------------------------------------------------------------------------------

    def _stamp_problem(self, stamp: float, now: float) -> str | None:
        if not math.isfinite(stamp):
            return f"non-finite stamp {stamp}"
        if stamp - now > self.config.max_clock_skew_s:
            return (
                f"stamp {stamp - now:.3f} s ahead of the node's clock (> max_clock_skew_s "
                f"{self.config.max_clock_skew_s} s): are two clocks mixed (use_sim_time, unsynchronized PCs)?"
            )
        return None

    def observe_joint_state(
        self,
        names: Sequence[str],
        positions: Sequence[float] | np.ndarray,
        stamp: float,
        now: float | None = None,
    ) -> bool:
        """Store the measured arm pose (reordered by name); returns False and holds on bad data.

        `now` is the caller's clock (default: the stamp itself). See the module docstring for what
        is refused; a refused measurement never replaces the last accepted one.
        """
        now = float(stamp) if now is None else float(now)
        with self._lock:
            try:
                idx = self.limits.check_names(names)
            except ValueError as err:
                self._refuse_measurement(now, "names", str(err)[:500])
                return False
            try:
                q = np.asarray(positions, dtype=np.float64)
            except (TypeError, ValueError) as err:
                self._refuse_measurement(now, "shape", f"positions not numeric: {err}"[:500])
                return False
            if q.ndim != 1 or q.shape[0] != len(names):
                self._refuse_measurement(now, "shape", f"{len(names)} names but positions of shape {q.shape}")
                return False
            q = q[idx]
            if not np.all(np.isfinite(q)):
                self._refuse_measurement(now, "non_finite", f"non-finite joint positions {q.tolist()}")
                return False
            problem = self._stamp_problem(stamp, now)
            if problem is not None:
                self._refuse_measurement(now, "stamp", f"joint state {problem}")
                return False
            stamp = min(float(stamp), now)
            if self._q_stamp is not None and stamp <= self._q_stamp:
                self.counters["joint_state_not_newer"] = self.counters.get("joint_state_not_newer", 0) + 1
                return False  # a repeated or reordered sample is not fresh; the watchdog sees the gap
            outside = (q < self.limits.q_min - MEASURED_LIMIT_TOLERANCE_RAD) | (
                q > self.limits.q_max + MEASURED_LIMIT_TOLERANCE_RAD
            )
            if np.any(outside):
                joints = ", ".join(
                    f"{self.limits.joint_names[j]} = {q[j]:.4f} (limits [{self.limits.q_min[j]:.4f}, "
                    f"{self.limits.q_max[j]:.4f}])"
                    for j in np.flatnonzero(outside)
                )
                self._refuse_measurement(now, "limits", f"measured pose outside the {self.config.robot} joint limits")
                if self._latched is None:
                    self._latch(
                        now,
                        "measured_outside_limits",
                        f"measured pose outside the joint limits, {joints}: a sensor fault or the wrong robot table?",
                    )
                return False
            self._check_tracking(q, stamp, now)
            self._q_measured = q
            self._q_stamp = stamp
            return True

    def _command_at(self, t: float) -> np.ndarray | None:
        """The setpoint commanded at time `t` (None when nothing was commanded then)."""
        for commanded in reversed(self._history):
            if commanded.start_time <= t:
                return commanded.at(t)[0]
        return None

    def _check_tracking(self, q: np.ndarray, stamp: float, now: float) -> None:
        if self._latched is not None or self._state not in (SafetyState.ENABLED, SafetyState.HOLD):
            return
        setpoint = self._command_at(stamp)
        if setpoint is None:
            return
        error = np.abs(q - setpoint)
        self.max_tracking_error = max(self.max_tracking_error, float(error.max()))
        if error.max() > self.config.max_tracking_error_rad:
            j = int(np.argmax(error))
            self._latch(
                now,
                "tracking",
                f"measured {self.limits.joint_names[j]} = {q[j]:.4f} is {error[j]:.4f} rad from the commanded "
                f"{setpoint[j]:.4f} (> max_tracking_error_rad {self.config.max_tracking_error_rad}): collision, "
                "reflex, a pushed arm or a sensor fault",
            )

    def observe_image(self, camera: str, stamp: float, now: float | None = None) -> bool:
        """Note that a frame of `camera` arrived (the watchdog checks its age); False when the frame
        does not count as fresh (bad stamp, refused with an event; or not newer than the last)."""
        now = float(stamp) if now is None else float(now)
        with self._lock:
            if camera not in self.config.cameras:
                known = ", ".join(self.config.cameras) or "(none configured)"
                raise ValueError(f"unknown camera {camera!r}; SafetyConfig.cameras: {known}")
            problem = self._stamp_problem(stamp, now)
            if problem is not None:
                self._record_throttled(now, "bad_image_stamp", f"camera {camera!r}: {problem}", camera)
                return False
            stamp = min(float(stamp), now)
            last = self._image_stamps.get(camera)
            if last is not None and stamp <= last:
                self.counters["image_not_newer"] = self.counters.get("image_not_newer", 0) + 1
                return False
            self._image_stamps[camera] = stamp
            return True

    # ---- state machine ---------------------------------------------------------------------------

    def _staleness(self, now: float) -> list[str]:
        reasons = []
        if self._q_stamp is None:
            reasons.append("no joint state received")
        elif now - self._q_stamp > self.config.stale_joint_state_s:
            reasons.append(f"joint state stale: {now - self._q_stamp:.3f} s > {self.config.stale_joint_state_s} s")
        for camera in self.config.cameras:
            stamp = self._image_stamps.get(camera)
            if stamp is None:
                reasons.append(f"no image from camera {camera!r}")
            elif now - stamp > self.config.stale_image_s:
                reasons.append(f"camera {camera!r} stale: {now - stamp:.3f} s > {self.config.stale_image_s} s")
        return reasons

    def check_watchdog(self, now: float) -> bool:
        """True when joint state and all cameras are fresh and nothing is latched.

        Stale data while ENABLED or HOLD latches a fault (reset() needed); while DISABLED it only
        reports False, so waiting for the first messages at start-up does not latch.
        """
        with self._lock:
            reasons = self._staleness(now)
            if reasons and self._latched is None and self._state in (SafetyState.ENABLED, SafetyState.HOLD):
                self._latch(now, "watchdog", "; ".join(reasons))
            return not reasons and self._latched is None

    def enable(self, now: float | None = None) -> Outcome:
        """DISABLED/HOLD -> ENABLED when data is fresh and nothing is latched; starts the smooth start."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._latched is not None:
                msg = f"enable refused: latched ({self._latched}); call reset() first"
                self._record(now, "enable_refused", msg, logging.WARNING)
                return Outcome(False, msg)
            if self._state is SafetyState.ENABLED:
                return Outcome(True, "already enabled")
            reasons = self._staleness(now)
            if reasons:
                msg = "enable refused: " + "; ".join(reasons)
                self._record(now, "enable_refused", msg, logging.WARNING)
                return Outcome(False, msg)
            assert self._q_measured is not None
            self._state = SafetyState.ENABLED
            self._enable_time = float(now)
            self._start_pose = self._q_measured.copy()
            self._set_commanded(None)
            self._record(now, "enabled", f"from measured pose {np.round(self._start_pose, 4).tolist()}", logging.INFO)
            return Outcome(True, "enabled")

    def disable(self, now: float | None = None) -> Outcome:
        """ENABLED/HOLD -> DISABLED (an ordinary stop; does not clear a latch)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._state is SafetyState.ESTOP:
                return Outcome(False, "in estop; call reset()")
            self._state = SafetyState.DISABLED
            self._record(now, "disabled", "disabled", logging.INFO)
            return Outcome(True, "disabled")

    def estop(self, reason: str, now: float | None = None) -> Outcome:
        """Latch ESTOP: nothing passes until reset()."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._state = SafetyState.ESTOP
            self._latched = f"estop: {reason}"
            self._record(now, "estop", reason, logging.ERROR)
            return Outcome(True, f"estop latched: {reason}")

    def reset(self, now: float | None = None) -> Outcome:
        """Clear a latch (estop or watchdog) -> DISABLED; enable() must be called again."""
        now = time.monotonic() if now is None else now
        with self._lock:
            cleared = self._latched
            self._latched = None
            self._state = SafetyState.DISABLED
            self._set_commanded(None)
            self._record(now, "reset", f"cleared: {cleared}" if cleared else "nothing latched", logging.INFO)
            return Outcome(True, "reset to disabled")

    # ---- outputs -----------------------------------------------------------------------------------

    def _set_commanded(self, commanded: _Commanded | None) -> None:
        """Record the trajectory now in force; None forgets every command (after enable or reset)."""
        if commanded is None:
            self._history.clear()
        else:
            self._history.append(commanded)

    def hold_trajectory(self, now: float) -> SafeTrajectory:
        """One point at the last accepted measured pose (what a node publishes to hold the arm);
        measurements outside the joint limits are never accepted, and the clip makes sure."""
        with self._lock:
            if self._q_measured is None:
                raise RuntimeError("no joint state observed yet: there is no pose to hold")
            q = np.clip(self._q_measured, self.limits.q_min, self.limits.q_max)
            start, _ = self._commanded_state(now)
            # Reached within the velocity limit from the last setpoint too: when measurement and
            # command disagree (a tracking fault) either may be wrong, and a controller that follows
            # its setpoint must not be sent across the gap at once.
            dt = max(self.config.control_dt, float(np.max(np.abs(q - start) / self._v_max)))
            self._set_commanded(_Commanded(float(now), np.array([0.0, dt]), np.stack([start, q])))
            self.counters["hold_published"] = self.counters.get("hold_published", 0) + 1
            return SafeTrajectory(self.limits.joint_names, q[None, :], np.array([dt]), ["hold at measured pose"])

    def _commanded_state(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        if self._history:
            return self._history[-1].at(now)
        assert self._q_measured is not None
        return self._q_measured.copy(), np.zeros(len(self.limits.joint_names))

    def filter_trajectory(
        self, names: Sequence[str], points: np.ndarray, times_from_start: np.ndarray, now: float
    ) -> SafeTrajectory | None:
        """The safe version of a policy's joint trajectory, or None (refused; the arm must hold)."""
        with self._lock:
            if self._latched is not None:
                self._refuse(now, "refused_latched", f"trajectory refused: latched ({self._latched})")
                return None
            if self._state is not SafetyState.ENABLED:
                self._refuse(now, "refused_not_enabled", f"trajectory refused: state is {self._state.value}")
                return None
            if not self.check_watchdog(now):
                self._refuse(now, "refused_stale", f"trajectory refused: {self._latched}")
                return None
            expected = list(self.limits.joint_names)
            got = [str(n) for n in names]
            if len(got) != len(expected) or set(got) != set(expected):
                self._refuse(now, "refused_joint_names", f"trajectory joint names: expected {expected}, got {got}")
                return None
            try:
                q_in = np.asarray(points, dtype=np.float64)
                t_in = np.asarray(times_from_start, dtype=np.float64)
            except (TypeError, ValueError) as err:
                self._refuse(now, "refused_shape", f"trajectory not numeric: {err}")
                return None
            if q_in.ndim != 2 or q_in.shape[0] < 1 or q_in.shape[1] != len(expected):
                self._refuse(now, "refused_shape", f"points must be (N>=1, {len(expected)}), got {q_in.shape}")
                return None
            if t_in.shape != (q_in.shape[0],):
                self._refuse(now, "refused_shape", f"times_from_start must be ({q_in.shape[0]},), got {t_in.shape}")
                return None
            if not (np.all(np.isfinite(q_in)) and np.all(np.isfinite(t_in))):
                self._refuse(now, "refused_nonfinite", "trajectory contains NaN or inf")
                return None
            if t_in[0] <= 0.0 or np.any(np.diff(t_in) <= 0.0):
                self._refuse(now, "refused_times", f"times_from_start must be > 0 and increasing, got {t_in.tolist()}")
                return None
            order = np.array([got.index(n) for n in expected], dtype=np.intp)
            positions, modifications = self._shape(q_in[:, order], t_in, now)
            if self.fk is not None:
                problem = self._workspace_problem(positions)
                if problem is not None:
                    self._refuse(now, "refused_workspace", problem)
                    return None
            start, _ = self._start_state(now)
            self._set_commanded(
                _Commanded(float(now), np.concatenate([[0.0], t_in]), np.concatenate([start[None, :], positions]))
            )
            for line in modifications:
                self._record(now, line.split(":", 1)[0], line)
            self.counters["trajectories"] = self.counters.get("trajectories", 0) + 1
            positions.setflags(write=False)
            return SafeTrajectory(self.limits.joint_names, positions, t_in.copy(), modifications)

    def _start_state(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Where a new trajectory starts: the commanded setpoint, pulled into the poses the arm can
        have reached since its last measurement at the scaled velocity limit (a setpoint that ran
        ahead of a lagging or stopped arm would otherwise make the first point unreachable)."""
        setpoint, velocity = self._commanded_state(now)
        assert self._q_measured is not None and self._q_stamp is not None
        reach = self._v_max * max(now - self._q_stamp, 0.0)
        start = np.clip(setpoint, self._q_measured - reach, self._q_measured + reach)
        return start, velocity

    def _shape(self, targets: np.ndarray, times: np.ndarray, now: float) -> tuple[np.ndarray, list[str]]:
        """Blend, clip, and rate/acceleration-limit the targets point by point (robot joint order)."""
        cfg = self.config
        hits: dict[str, tuple[int, set[int]]] = {}

        def hit(kind: str, joints: np.ndarray) -> None:
            n, js = hits.get(kind, (0, set()))
            hits[kind] = (n + 1, js | {int(j) for j in joints})

        q_prev, v_prev = self._start_state(now)
        setpoint, _ = self._commanded_state(now)
        if np.any(q_prev != setpoint):
            hit("reanchored", np.flatnonzero(q_prev != setpoint))
        out = np.empty_like(targets)

        t_prev = 0.0
        for i, (target, t) in enumerate(zip(targets, times, strict=True)):
            dt = float(t - t_prev)
            q = target.copy()
            assert self._enable_time is not None and self._start_pose is not None
            elapsed = now + float(t) - self._enable_time
            if cfg.smooth_start_s > 0.0 and elapsed < cfg.smooth_start_s:
                q = smooth_start_blend(self._start_pose, q, elapsed, cfg.smooth_start_s)
                hit("smooth_start", np.arange(q.size))
            clipped = np.clip(q, self._lo, self._hi)
            if np.any(clipped != q):
                hit("position_clipped", np.flatnonzero(clipped != q))
            q = clipped
            # step and velocity: scale the whole step, keep its direction
            delta = q - q_prev
            mag = np.abs(delta)
            moving = mag > 0
            with np.errstate(over="ignore"):  # a subnormal step gives an infinite (unused) scale
                s_step = float(np.min(cfg.max_step_rad / mag[moving])) if moving.any() else math.inf
                s_vel = float(np.min(self._v_max[moving] * dt / mag[moving])) if moving.any() else math.inf
            s = min(1.0, s_step, s_vel)
            if s < 1.0:
                hit("max_step" if s_step <= s_vel else "velocity", np.flatnonzero(moving))
                delta = delta * s
            # acceleration: clamp each joint's velocity change
            vel = delta / dt
            v_acc = np.clip(vel, v_prev - self._a_max * dt, v_prev + self._a_max * dt)
            if np.any(v_acc != vel):
                hit("acceleration", np.flatnonzero(v_acc != vel))
            # rate caps, and braking: never faster towards a limit than can still stop before it
            v_cap = np.minimum(self._v_max, cfg.max_step_rad / dt)
            upper = np.minimum(v_cap, braking_speed(np.maximum(self._hi - q_prev, 0.0), self._a_max, dt))
            lower = -np.minimum(v_cap, braking_speed(np.maximum(q_prev - self._lo, 0.0), self._a_max, dt))
            v_new = np.clip(v_acc, lower, upper)
            if np.any(v_new != v_acc):
                hit("braking", np.flatnonzero(v_new != v_acc))
            infeasible = np.abs(v_new - v_prev) > self._a_max * dt * (1 + 1e-9)
            if np.any(infeasible):  # position/rate limits won over acceleration
                hit("accel_infeasible", np.flatnonzero(infeasible))
            q = q_prev + v_new * dt
            # never push further out; a pose already inside the margin band may stay there
            final = np.clip(q, np.minimum(self._lo, q_prev), np.maximum(self._hi, q_prev))
            if np.any(final != q):
                hit("position_clipped", np.flatnonzero(final != q))
            out[i] = final
            v_prev = (final - q_prev) / dt
            q_prev = final
            t_prev = float(t)
        names = self.limits.joint_names
        lines = [
            f"{kind}: {n} of {len(times)} points (joints {', '.join(names[j] for j in sorted(js))})"
            for kind, (n, js) in hits.items()
        ]
        return out, lines

    def _workspace_problem(self, positions: np.ndarray) -> str | None:
        assert self.fk is not None
        lo = np.asarray(self.config.workspace_min)
        hi = np.asarray(self.config.workspace_max)
        for i, q in enumerate(positions):
            p = np.asarray(self.fk(q.copy()), dtype=np.float64)
            if p.shape != (3,) or not np.all(np.isfinite(p)):
                return f"fk returned {p.tolist()} for point {i} (need 3 finite values)"
            if np.any(p < lo) or np.any(p > hi):
                return (
                    f"point {i} puts the end effector at {np.round(p, 4).tolist()}, outside the workspace box "
                    f"{list(self.config.workspace_min)} .. {list(self.config.workspace_max)}"
                )
        return None

    # ---- diagnostics -------------------------------------------------------------------------------

    def describe(self, now: float | None = None) -> dict[str, object]:
        """A flat summary for diagnostics (state, latch, what is and is not checked, counters)."""
        with self._lock:
            info: dict[str, object] = {
                "robot": self.config.robot,
                "state": self._state.value,
                "latched_reason": self._latched,
                "workspace_check": "on" if self.fk is not None else "skipped: no fk given",
                "velocity_scale": self.config.velocity_scale,
                "accel_scale": self.config.accel_scale,
                "max_step_rad": self.config.max_step_rad,
                "joint_margin_rad": self.config.joint_margin_rad,
                "cameras": list(self.config.cameras),
                "enabled_at": self._enable_time if self._state is SafetyState.ENABLED else None,
                "counters": dict(self.counters),
                "max_tracking_error_rad": self.max_tracking_error,
                "last_event": None if not self.events else f"{self.events[-1].kind}: {self.events[-1].detail}",
            }
            if now is not None:
                info["joint_state_age_s"] = None if self._q_stamp is None else now - self._q_stamp
                info["image_age_s"] = {c: now - s for c, s in self._image_stamps.items()}
            return info
