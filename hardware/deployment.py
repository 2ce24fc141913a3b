"""Between a robot's measurements and a policy: observations in, joint targets out (no ROS).

The ROS policy node (ros2_ws/src/vla_ros/vla_ros/policy_node.py) is a thin shell around this:
- ``STATE_LAYOUTS`` build the policy's ``observation.state`` from joint measurements, the same
  vector the simulator gave the policy in training (e.g. RoboMimic's q, end-effector pose and
  finger positions, with the pose from the Panda kinematics);
- ``ACTION_SPACES`` turn a policy's actions into joint-position targets for a
  JointTrajectoryController: joint targets pass straight through, end-effector deltas (the
  RoboMimic/LIBERO OSC convention) go through inverse kinematics;
- ``POLICY_BACKENDS`` run the model in this process or on a policy server (`vla serve`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla import keys
from vla.observation import ObservationSpec
from vla.registry import Registry
from vla.threads import set_thread_budget

ARM_DOF = 7


@dataclass(frozen=True)
class Measurement:
    """One joint-state sample in robot joint order (arm 7, fingers 2 in the Franka convention)."""

    q: np.ndarray
    fingers: np.ndarray
    stamp: float


# --------------------------------------------------------------------------- observation.state
def robomimic_panda_state(kinematics, m: Measurement) -> np.ndarray:
    """RoboMimic's proprioception: q (7), eef pos (3), eef quat xyzw (4), finger qpos (2, robosuite signs)."""
    pos, _ = kinematics.fk(m.q)
    quat = kinematics.fk_eef_quat_xyzw(m.q)
    return np.concatenate([m.q, pos, quat, [m.fingers[0], -m.fingers[1]]]).astype(np.float32)


def joint_state(kinematics, m: Measurement) -> np.ndarray:
    """q (7) and the gripper width (1): for policies trained on joint-space data."""
    return np.concatenate([m.q, [m.fingers.sum()]]).astype(np.float32)


STATE_LAYOUTS: Registry = Registry("state layout")
STATE_LAYOUTS.add("robomimic_panda", robomimic_panda_state)
STATE_LAYOUTS.add("joint_state", joint_state)


# --------------------------------------------------------------------------- actions -> joint targets
class EEDeltaActions:
    """RoboMimic/LIBERO OSC_POSE deltas [dpos(3), dax-angle(3), gripper] -> joint targets.

    The first action is anchored at the measured pose, as robosuite's controller anchors every
    step; the following ones chain from the previous target (the pose the arm will be at if it
    tracks), so one chunk becomes one smooth trajectory. The next control tick re-anchors.

    ``gain`` scales the deltas. robosuite's compliant OSC covers only about a quarter of each
    step's goal within the step (tests/test_kinematics.py measures it), while a
    JointTrajectoryController reaches its targets; a policy trained in robosuite therefore
    expects the slower arm, and the gain gives it back (see launch/params/policy_sim_lift.yaml).
    """

    action_dim = 7

    def __init__(self, kinematics, gain: float = 1.0, goal_box: tuple[Sequence[float], Sequence[float]] | None = None):
        from hardware.franka.kinematics import EEDeltaToJoint, OscDeltaConfig

        if not 0 < gain <= 1:
            raise ValueError(f"ee_delta gain must be in (0, 1], got {gain}")
        box = {} if goal_box is None else {"goal_box_min": tuple(goal_box[0]), "goal_box_max": tuple(goal_box[1])}
        self.converter = EEDeltaToJoint(kinematics, OscDeltaConfig(**box))
        self.gain = gain

    @property
    def goals_clipped(self) -> int:
        return self.converter.goals_clipped

    def reset(self) -> None:
        self.converter.reset()

    def joint_targets(self, q_measured: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        targets, grippers, converged = [], [], True
        q = q_measured
        for action in actions:
            action = np.concatenate([np.asarray(action[:6], dtype=np.float64) * self.gain, action[6:]])
            q, gripper = self.converter.convert(q, action)
            converged &= bool(self.converter.last_ik.converged)
            targets.append(q)
            grippers.append(gripper)
        return np.stack(targets), np.asarray(grippers), converged


class JointPositionActions:
    """Absolute joint targets [q (7), gripper]: straight to the trajectory controller."""

    action_dim = 8

    goals_clipped = 0  # joint targets are not clipped here: the safety layer refuses outside the box

    def __init__(self, kinematics=None, gain: float = 1.0, goal_box=None):
        if gain != 1.0:
            raise ValueError("the gain applies to ee_delta actions only")

    def reset(self) -> None:
        pass

    def joint_targets(self, q_measured: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        return np.asarray(actions[:, :ARM_DOF], dtype=np.float64), np.asarray(actions[:, ARM_DOF]), True


ACTION_SPACES: Registry = Registry("action space")
ACTION_SPACES.add("ee_delta", EEDeltaActions)
ACTION_SPACES.add("joint_position", JointPositionActions)


class GripperSwitch:
    """A continuous gripper action -> discrete open/close commands, with hysteresis.

    Policies emit values near -1 (open) and +1 (close); commanding a real gripper on every
    small wiggle around zero would chatter, so a command is issued only on a crossing.
    """

    def __init__(self, threshold: float = 0.0, hysteresis: float = 0.2):
        self.threshold, self.hysteresis = threshold, hysteresis
        self.closed: bool | None = None

    def reset(self) -> None:
        self.closed = None

    def update(self, value: float) -> str | None:
        """Returns "close" or "open" when the command changes, else None."""
        if self.closed is not True and value > self.threshold + self.hysteresis:
            self.closed = True
            return "close"
        if self.closed is not False and value < self.threshold - self.hysteresis:
            self.closed = False
            return "open"
        return None


# --------------------------------------------------------------------------- policy backends
def policy_metadata(policy) -> dict[str, Any]:
    """What a caller needs to feed a policy and run its chunks: the policy server's handshake."""
    return policy.observation_spec.metadata()


def feature_shapes(metadata: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Array features (name -> shape) of a policy's metadata; the instruction is not an array."""
    return ObservationSpec.from_metadata(metadata).array_features


class LocalPolicy:
    """The checkpoint in this process. ``device`` is used as given: no silent CPU fallback."""

    def __init__(
        self,
        checkpoint: str,
        device: str = "cpu",
        seed: int = 0,
        threads: int = 1,
        verifier: str = "",
        num_samples: int = 16,
    ):
        import torch

        # One intra-op thread by default (the node role's budget): a controller PC also runs
        # cameras, DDS and the control timer, and OpenMP workers spinning on every core starve
        # them (stale joint states).
        set_thread_budget("node", threads)

        from vla.policies.checkpoint import load_policy

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
        self.torch = torch
        self.policy = load_policy(checkpoint, device=device).eval()
        self.metadata = policy_metadata(self.policy)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        # a test-time verifier (TACO) picks each chunk among num_samples candidates
        self.selector = None
        self.last_verdict: dict[str, Any] | None = None
        if verifier:
            from vla.verifiers import VERIFIERS

            self.selector = VERIFIERS.get(verifier)(checkpoint, self.policy, num_samples)
        self.infer(example_observation(self.metadata))  # lazy loads (language encoder) happen now, not mid-task

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        c = self.policy.config
        noise = self.torch.randn((1, c.chunk_size, c.action_dim), generator=self.generator, device=self.device)
        batch = {k: (v if k == keys.TASK else np.asarray(v)[None]) for k, v in obs.items()}
        if keys.TASK in batch:
            batch[keys.TASK] = [batch[keys.TASK]]
        with self.torch.inference_mode():
            if self.selector is None:
                chunk = self.policy.predict_action_chunk(batch, noise=noise)
            else:
                chunk = self.selector.predict_action_chunk(batch)
                self.last_verdict = {key: values[0] for key, values in self.selector.last_verdict.items()}
        return chunk[0].detach().cpu().numpy().astype(np.float32)

    def close(self) -> None:
        pass


class RemotePolicy:
    """A `vla serve` policy server; an unreachable server raises ConnectionError at construction."""

    def __init__(self, host: str, port: int, api_key: str | None = None, timeout_s: float = 5.0):
        from vla.serving.client import PolicyClient

        self.client = PolicyClient(host, port, api_key=api_key, timeout_s=timeout_s)
        self.metadata = dict(self.client.metadata)
        self.last_verdict: dict[str, Any] | None = None  # a server with --verifier says it per reply

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        reply = self.client.infer(obs)
        self.last_verdict = reply.get("verifier")
        return np.asarray(reply["actions"], dtype=np.float32)

    def close(self) -> None:
        self.client.close()


def example_observation(metadata: dict[str, Any]) -> dict[str, Any]:
    """A neutral observation with the policy's shapes (zeros, mid-grey images) for warm-up calls."""
    return ObservationSpec.from_metadata(metadata).example(image_value=128)


def check_observation(metadata: dict[str, Any], obs: dict[str, Any]) -> None:
    """Refuse, with a clear message, an observation the policy was not trained on (one robot:
    unbatched)."""
    ObservationSpec.from_metadata(metadata).to_batch(obs, allow_batched=False)


class LatencyLog:
    """Per-stage latencies in ms, for diagnostics and the benchmark table (p50/p99)."""

    def __init__(self, maxlen: int = 5000):
        self.samples: dict[str, deque[float]] = {}
        self.maxlen = maxlen

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=self.maxlen)).append(float(ms))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.samples.items():
            if values:
                v = np.asarray(values)
                out[stage] = {
                    "p50": float(np.percentile(v, 50)),
                    "p99": float(np.percentile(v, 99)),
                    "mean": float(v.mean()),
                    "n": int(len(v)),
                }
        return out
