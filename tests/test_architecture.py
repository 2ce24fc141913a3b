"""Direction of imports: importing the core library pulls in no simulator, ROS or vendor SDK."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sim", "mani_skill", "sapien", "robosuite", "metaworld", "libero", "rclpy", "pyrealsense2", "lerobot")


def test_core_modules_import_no_simulator_at_module_level():
    code = f"""
import importlib, pkgutil, sys
import vla
for info in pkgutil.walk_packages(vla.__path__, "vla."):
    importlib.import_module(info.name)
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(",".join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing vla.* loaded {out}"
