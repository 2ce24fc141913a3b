"""A gamepad through the Linux joystick interface (``/dev/input/js*``): no pygame, no display.

The kernel's joydev driver hands 8-byte ``struct js_event`` records (u32 time in ms, s16 value,
u8 type, u8 number); the initial state arrives as events flagged ``JS_EVENT_INIT``. Layout of an
Xbox-style pad under xpad (axes 0/1 left stick, 3/4 right stick, 6/7 d-pad):

    move      left stick: x/y   right stick up/down: z
    rotate    right stick left/right: yaw   d-pad up/down: pitch   LB/RB: roll
    gripper   A: close/open
    episode   start: start / save   back: discard   X: re-record   guide: quit
    policy    Y: take over   B: give back
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import struct

import numpy as np

from hardware.teleop import base

EVENT = struct.Struct("<IhBB")  # struct js_event
JS_EVENT_BUTTON, JS_EVENT_AXIS, JS_EVENT_INIT = 0x01, 0x02, 0x80
AXIS_MAX = 32767.0
DEADZONE = 0.1

# axis number -> (twist component, sign): stick up reads negative
AXES = {1: (0, -1.0), 0: (1, -1.0), 4: (2, -1.0), 3: (5, -1.0), 7: (4, -1.0)}
BUTTON_A, BUTTON_B, BUTTON_X, BUTTON_Y, BUTTON_LB, BUTTON_RB, BUTTON_BACK, BUTTON_START, BUTTON_GUIDE = range(9)
BUTTON_EVENTS = {
    BUTTON_START: base.NEXT,
    BUTTON_BACK: base.DISCARD,
    BUTTON_X: base.RERECORD,
    BUTTON_GUIDE: base.QUIT,
    BUTTON_Y: base.TAKEOVER,
    BUTTON_B: base.RELEASE,
}


def _jsiocgname(length: int) -> int:
    return (2 << 30) | (length << 16) | (ord("j") << 8) | 0x13  # _IOC(_IOC_READ, 'j', 0x13, len)


def joystick_name(fd: int) -> str:
    buf = bytearray(128)
    try:
        fcntl.ioctl(fd, _jsiocgname(len(buf)), buf)
    except OSError:
        return "unknown"
    return buf.split(b"\0", 1)[0].decode(errors="replace")


def list_gamepads() -> list[str]:
    """``path (name)`` of every joystick device this user can see."""
    found = []
    for path in sorted(glob.glob("/dev/input/js*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            found.append(f"{path} (cannot open: {e.strerror})")
            continue
        try:
            found.append(f"{path} ({joystick_name(fd)})")
        finally:
            os.close(fd)
    return found


class GamepadDevice(base.TeleopDevice):
    name = "gamepad"
    help = __doc__.split("\n\n", 2)[2].rstrip() if __doc__ else ""

    def __init__(self, path: str | None = None):
        """``path``: a joystick device (default: the first ``/dev/input/js*``)."""
        self.path = path
        self._fd: int | None = None
        self._axes = np.zeros(8)
        self._buttons = np.zeros(16, dtype=bool)
        self._gripper = base.GripperToggle()
        self._partial = b""

    def connect(self) -> None:
        path = self.path
        if path is None:
            candidates = sorted(glob.glob("/dev/input/js*"))
            if not candidates:
                raise base.DeviceNotFoundError(
                    "no gamepad found: no /dev/input/js* device (is it plugged in, and is the joydev module "
                    "loaded?). Other teleop devices: --device keyboard | spacemouse | scripted"
                )
            path = candidates[0]
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            found = list_gamepads()
            raise base.DeviceNotFoundError(
                f"cannot open gamepad {path}: {e.strerror}. Joystick devices found: {', '.join(found) or 'none'}"
            ) from None
        self.path = path

    def disconnect(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _drain(self) -> list[tuple[int, int, int]]:
        assert self._fd is not None, "connect() first"
        data = self._partial
        while True:
            try:
                chunk = os.read(self._fd, EVENT.size * 64)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENODEV:
                    raise base.DeviceDisconnectedError(f"gamepad {self.path} was unplugged") from None
                raise base.DeviceDisconnectedError(f"gamepad {self.path}: {e.strerror}") from None
            if not chunk:
                raise base.DeviceDisconnectedError(f"gamepad {self.path} closed")
            data += chunk
        whole = len(data) - len(data) % EVENT.size
        self._partial = data[whole:]
        return [EVENT.unpack_from(data, i)[1:] for i in range(0, whole, EVENT.size)]

    def read(self) -> base.TeleopCommand:
        events: list[str] = []
        for value, kind, number in self._drain():
            initial = bool(kind & JS_EVENT_INIT)
            kind &= ~JS_EVENT_INIT
            if kind == JS_EVENT_AXIS and number < len(self._axes):
                self._axes[number] = value / AXIS_MAX
            elif kind == JS_EVENT_BUTTON and number < len(self._buttons):
                pressed = bool(value)
                if pressed and not self._buttons[number] and not initial and number in BUTTON_EVENTS:
                    events.append(BUTTON_EVENTS[number])
                self._buttons[number] = pressed
                if number == BUTTON_A:
                    self._gripper.update(pressed)
        twist = np.zeros(6)
        for axis, (component, sign) in AXES.items():
            value = self._axes[axis]
            twist[component] = sign * value if abs(value) > DEADZONE else 0.0
        twist[3] = float(self._buttons[BUTTON_RB]) - float(self._buttons[BUTTON_LB])
        return base.TeleopCommand(twist=twist, gripper_closed=self._gripper.closed, events=tuple(events))
