"""Franka FR3 / Panda facts: joint names, limits and home pose (see limits.py)."""

from hardware.franka.limits import FR3, PANDA, ROBOTS, JointLimits, get_limits

__all__ = ["FR3", "PANDA", "ROBOTS", "JointLimits", "get_limits"]
