"""A keyboard in a plain terminal: works over SSH and without a desktop (no X server, no pynput).

The terminal is put in cbreak mode and stdin is read without blocking. A terminal reports key
presses (and the key repeat of a held key), never releases, so a press moves the arm for a
short hold time and a held key keeps it moving through the repeat.

    move      w/s: +x/-x   a/d: +y/-y   r/f: +z/-z
    rotate    i/k: pitch   j/l: yaw     u/o: roll
    gripper   space: close/open
    episode   enter: start / save   backspace: discard   x: re-record   z: undo last   q: quit
    policy    t: take over   g: give back
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import IO

import numpy as np

from hardware.teleop import base

# key -> (twist component, sign)
MOTION_KEYS = {
    "w": (0, 1.0),
    "s": (0, -1.0),
    "a": (1, 1.0),
    "d": (1, -1.0),
    "r": (2, 1.0),
    "f": (2, -1.0),
    "u": (3, 1.0),
    "o": (3, -1.0),
    "i": (4, 1.0),
    "k": (4, -1.0),
    "j": (5, 1.0),
    "l": (5, -1.0),
}
EVENT_KEYS = {
    "\n": base.NEXT,
    "\r": base.NEXT,
    "\x7f": base.DISCARD,
    "\x08": base.DISCARD,
    "x": base.RERECORD,
    "z": base.UNDO,
    "q": base.QUIT,
    "\x1b": base.QUIT,
    "t": base.TAKEOVER,
    "g": base.RELEASE,
}
GRIPPER_KEY = " "


class KeyboardDevice(base.TeleopDevice):
    name = "keyboard"
    help = __doc__.split("\n\n", 2)[2].rstrip() if __doc__ else ""

    def __init__(self, stream: IO[str] | None = None, hold_seconds: float = 0.12, speed: float = 1.0):
        """``stream``: where keys come from (default stdin, which must be a terminal);
        ``hold_seconds``: how long one press keeps moving (covers the gap to the key repeat)."""
        self._stream = stream
        self.hold_seconds = hold_seconds
        self.speed = speed
        self._until = np.zeros(6)  # per component: moving until this time
        self._sign = np.zeros(6)
        self._closed = False
        self._saved_tty = None

    def connect(self) -> None:
        if self._stream is None:
            if not sys.stdin.isatty():
                raise base.DeviceNotFoundError(
                    "the keyboard device reads keys from a terminal, and stdin is not one "
                    "(run `vla record` in a terminal or over ssh -t; or use --device gamepad|spacemouse|scripted)"
                )
            self._stream = sys.stdin
        if self._stream.isatty():  # keys as they are pressed, not after Enter, and not echoed
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self._stream.fileno())
            tty.setcbreak(self._stream.fileno())

    def disconnect(self) -> None:
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self._stream.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _pending_keys(self) -> str:
        stream = self._stream
        assert stream is not None, "connect() first"
        try:
            fd = stream.fileno()
        except (AttributeError, OSError):  # an in-memory stream (tests)
            return stream.read()
        keys = ""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1024)
            if not chunk:
                raise base.DeviceDisconnectedError("the terminal closed (end of input)")
            keys += chunk.decode(errors="ignore")
        return keys

    def read(self) -> base.TeleopCommand:
        now = time.monotonic()
        events: list[str] = []
        for key in self._pending_keys():
            key_lower = key.lower()
            if key_lower in MOTION_KEYS:
                component, sign = MOTION_KEYS[key_lower]
                self._until[component] = now + self.hold_seconds
                self._sign[component] = sign
            elif key == GRIPPER_KEY:
                self._closed = not self._closed
            elif key in EVENT_KEYS or key_lower in EVENT_KEYS:
                events.append(EVENT_KEYS.get(key, EVENT_KEYS.get(key_lower)))
        twist = np.where(self._until > now, self._sign * self.speed, 0.0)
        return base.TeleopCommand(twist=twist, gripper_closed=self._closed, events=tuple(events))
