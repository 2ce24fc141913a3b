"""A 3Dconnexion SpaceMouse through Linux hidraw (``/dev/hidraw*``): no hidapi or pyspacemouse needed.

Devices are found from ``/sys/class/hidraw/*/device/uevent`` (USB vendor 0x256F, or 0x046D with
a 3Dconnexion product), and their HID input reports are read as the devices send them:
report 1 translation (x, y, z as little-endian int16; newer models append rotation in the same
report), report 2 rotation, report 3 buttons (bit 0 left, bit 1 right). Full deflection is about
350 counts.

    move      push/pull the cap: x/y   lift/press: z
    rotate    tilt and twist the cap
    gripper   left button: close/open
    episode   right button: start / save (other controls from the terminal keyboard)

Reading ``/dev/hidraw*`` needs permission: a udev rule such as
``KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0666"``.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import numpy as np

from hardware.teleop import base

VENDOR_3DCONNEXION = 0x256F
VENDOR_LOGITECH = 0x046D  # older SpaceNavigator / SpaceMouse Pro: products 0xC603-0xC6FF
FULL_SCALE = 350.0
DEADZONE = 0.05
AXES = struct.Struct("<hhh")


def _uevent(hidraw: Path) -> dict[str, str]:
    try:
        lines = (hidraw / "device" / "uevent").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def hid_devices(sysfs: str = "/sys/class/hidraw") -> list[dict[str, str | int]]:
    """Every hidraw device: ``path``, ``name``, ``vendor``, ``product``."""
    found = []
    for entry in sorted(Path(sysfs).glob("hidraw*")):
        info = _uevent(entry)
        parts = info.get("HID_ID", "0:0:0").split(":")
        vendor, product = (int(parts[1], 16), int(parts[2], 16)) if len(parts) == 3 else (0, 0)
        found.append(
            {"path": f"/dev/{entry.name}", "name": info.get("HID_NAME", "?"), "vendor": vendor, "product": product}
        )
    return found


def is_spacemouse(device: dict) -> bool:
    if device["vendor"] == VENDOR_3DCONNEXION:
        return True
    return device["vendor"] == VENDOR_LOGITECH and 0xC603 <= int(device["product"]) <= 0xC6FF


class SpaceMouseDevice(base.TeleopDevice):
    name = "spacemouse"
    help = __doc__.split("\n\n", 2)[2].split("\n\n")[0].rstrip() if __doc__ else ""

    def __init__(self, path: str | None = None, sysfs: str = "/sys/class/hidraw"):
        self.path = path
        self.sysfs = sysfs
        self._fd: int | None = None
        self._translation = np.zeros(3)
        self._rotation = np.zeros(3)
        self._gripper = base.GripperToggle()
        self._right_down = False

    def connect(self) -> None:
        path = self.path
        if path is None:
            devices = hid_devices(self.sysfs)
            mice = [d for d in devices if is_spacemouse(d)]
            if not mice:
                seen = ", ".join(f"{d['path']} ({d['name']}, {d['vendor']:04x}:{d['product']:04x})" for d in devices)
                raise base.DeviceNotFoundError(
                    "no 3Dconnexion SpaceMouse found among the HID devices: "
                    f"{seen or 'none'}. Other teleop devices: --device keyboard | gamepad | scripted"
                )
            path = str(mice[0]["path"])
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise base.DeviceNotFoundError(
                f"cannot open SpaceMouse {path}: {e.strerror} (a udev rule must give this user read access; "
                "see hardware/teleop/spacemouse.py)"
            ) from None
        self.path = path

    def disconnect(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _reports(self) -> list[bytes]:
        assert self._fd is not None, "connect() first"
        reports = []
        while True:
            try:
                report = os.read(self._fd, 64)  # hidraw returns one report per read
            except BlockingIOError:
                return reports
            except OSError as e:
                reason = "was unplugged" if e.errno == errno.ENODEV else e.strerror
                raise base.DeviceDisconnectedError(f"SpaceMouse {self.path} {reason}") from None
            if not report:
                raise base.DeviceDisconnectedError(f"SpaceMouse {self.path} closed")
            reports.append(report)

    def read(self) -> base.TeleopCommand:
        events: list[str] = []
        for report in self._reports():
            kind = report[0]
            if kind == 1 and len(report) >= 7:
                self._translation = np.array(AXES.unpack_from(report, 1), dtype=float)
                if len(report) >= 13:
                    self._rotation = np.array(AXES.unpack_from(report, 7), dtype=float)
            elif kind == 2 and len(report) >= 7:
                self._rotation = np.array(AXES.unpack_from(report, 1), dtype=float)
            elif kind == 3 and len(report) >= 2:
                left, right = bool(report[1] & 1), bool(report[1] & 2)
                self._gripper.update(left)
                if right and not self._right_down:
                    events.append(base.NEXT)
                self._right_down = right
        raw = np.concatenate([self._translation, self._rotation]) / FULL_SCALE
        # device axes -> robot base frame: cap pushed away from the operator is +x, left is +y, up is +z
        twist = np.array([-raw[1], -raw[0], -raw[2], -raw[4], -raw[3], -raw[5]])
        twist[np.abs(twist) < DEADZONE] = 0.0
        return base.TeleopCommand(twist=twist, gripper_closed=self._gripper.closed, events=tuple(events))


def list_spacemice() -> list[str]:
    return [f"{d['path']} ({d['name']})" for d in hid_devices() if is_spacemouse(d)]


__all__ = ["SpaceMouseDevice", "hid_devices", "is_spacemouse", "list_spacemice"]
