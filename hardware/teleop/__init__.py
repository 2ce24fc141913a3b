"""Teleoperation devices behind one small contract (``base.TeleopDevice``), by name.

    from hardware.teleop import make_device
    with make_device("keyboard") as device:
        command = device.read()   # TeleopCommand: twist (6,), gripper_closed, events

Every device reads Linux interfaces directly (a terminal, ``/dev/input/js*``, ``/dev/hidraw*``),
so recording works over SSH and needs no desktop session or extra packages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hardware.teleop.base import (
    EVENTS,
    DeviceDisconnectedError,
    DeviceNotFoundError,
    TeleopCommand,
    TeleopDevice,
)
from vla.registry import Registry


def _keyboard(**kwargs: Any) -> TeleopDevice:
    from hardware.teleop.keyboard import KeyboardDevice

    return KeyboardDevice(**kwargs)


def _gamepad(**kwargs: Any) -> TeleopDevice:
    from hardware.teleop.gamepad import GamepadDevice

    return GamepadDevice(**kwargs)


def _spacemouse(**kwargs: Any) -> TeleopDevice:
    from hardware.teleop.spacemouse import SpaceMouseDevice

    return SpaceMouseDevice(**kwargs)


def _scripted(**kwargs: Any) -> TeleopDevice:
    from hardware.teleop.scripted import ScriptedDevice

    return ScriptedDevice(**kwargs)


TELEOP_DEVICES: Registry[Callable[..., TeleopDevice]] = Registry("teleop device")
TELEOP_DEVICES.add("keyboard", _keyboard)
TELEOP_DEVICES.add("gamepad", _gamepad)
TELEOP_DEVICES.add("spacemouse", _spacemouse)
TELEOP_DEVICES.add("scripted", _scripted)


def make_device(name: str, **kwargs: Any) -> TeleopDevice:
    """A device by name (not yet connected); an unknown name lists the registered ones."""
    return TELEOP_DEVICES.get(name)(**kwargs)


__all__ = [
    "EVENTS",
    "TELEOP_DEVICES",
    "DeviceDisconnectedError",
    "DeviceNotFoundError",
    "TeleopCommand",
    "TeleopDevice",
    "make_device",
]
