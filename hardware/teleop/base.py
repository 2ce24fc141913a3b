"""The teleoperator contract: what every device (keyboard, gamepad, SpaceMouse, scripted) returns.

A device is polled once per control tick and answers with a ``TeleopCommand``: a normalized
end-effector twist (translation xyz, rotation about xyz, each in [-1, 1]), the gripper state
the person wants, whether the person is actively moving the device (for taking over from a
policy) and the episode-control events pressed since the last poll. Suites map the twist to
their own end-effector delta actions (``sim.teleop``); the real arm goes through the same
safety layer as a policy.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

# Episode controls, whatever the device: from the keyboard in a terminal, a device button or a script.
START = "start"  # begin recording an episode
SAVE = "save"  # stop and save the episode
NEXT = "next"  # one key for both: start when idle, save when recording
RERECORD = "rerecord"  # throw the episode away and start it again from a fresh reset
DISCARD = "discard"  # stop and throw the episode away
UNDO = "undo"  # remove the last saved episode
QUIT = "quit"  # stop recording (the episode in progress is discarded; saved ones stay)
TAKEOVER = "takeover"  # the person takes control from the policy
RELEASE = "release"  # hand control back to the policy
EVENTS = (START, SAVE, NEXT, RERECORD, DISCARD, UNDO, QUIT, TAKEOVER, RELEASE)

ENGAGE_THRESHOLD = 0.05  # a twist component above this (normalized) counts as the person moving the device


class DeviceNotFoundError(RuntimeError):
    """No device of the requested kind; the message lists what was found."""


class DeviceDisconnectedError(RuntimeError):
    """The device went away while in use (unplugged, read error)."""


@dataclass
class TeleopCommand:
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6, dtype=np.float32))  # (6,) in [-1, 1]
    gripper_closed: bool = False
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        twist = np.asarray(self.twist, dtype=np.float32).reshape(-1)
        if twist.shape != (6,):
            raise ValueError(f"a teleop twist has 6 components (xyz, rotation xyz); got shape {twist.shape}")
        if not np.isfinite(twist).all():
            raise ValueError(f"a teleop twist must be finite; got {twist.tolist()}")
        self.twist = np.clip(twist, -1.0, 1.0)
        unknown = [e for e in self.events if e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown teleop events {unknown}; known: {', '.join(EVENTS)}")

    @property
    def engaged(self) -> bool:
        """The person is moving the device (used to take over from a policy)."""
        return bool(np.abs(self.twist).max() > ENGAGE_THRESHOLD)


class TeleopDevice(abc.ABC):
    """One input device. ``connect`` fails with ``DeviceNotFoundError`` listing what exists;
    ``read`` never blocks and raises ``DeviceDisconnectedError`` when the device goes away."""

    name: str = "device"
    help: str = ""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> TeleopCommand: ...

    def disconnect(self) -> None:  # noqa: B027 - optional hook
        pass

    def controls(self) -> str:
        """One line per control, shown to the operator."""
        return self.help

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.disconnect()


class GripperToggle:
    """A button that toggles the gripper on each press (not while held)."""

    def __init__(self) -> None:
        self.closed = False
        self._was_down = False

    def update(self, down: bool) -> bool:
        if down and not self._was_down:
            self.closed = not self.closed
        self._was_down = down
        return self.closed
