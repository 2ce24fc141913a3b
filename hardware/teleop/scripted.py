"""A virtual device that plays a script of key and axis events: headless tests and demos.

A script is a list of steps, each held for ``ticks`` control ticks::

    [{"events": ["start"]},
     {"twist": [0, 0, -1, 0, 0, 0], "ticks": 20},
     {"gripper": true, "ticks": 5},
     {"events": ["save"]},
     {"unplug": true}]

``events`` fire on the step's first tick; ``twist`` and ``gripper`` hold for all its ticks (the
gripper state carries over to later steps). ``{"expert": true, "ticks": 200}`` moves the device
as the task's scripted expert would (the recorder supplies ``expert_fn``): a virtual operator.
``unplug`` makes the next read raise ``DeviceDisconnectedError``, as a real device pulled out
mid-episode. When the script ends the
device sends ``quit``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardware.teleop import base

STEP_KEYS = {"events", "twist", "gripper", "ticks", "unplug", "expert"}


def load_script(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise base.DeviceNotFoundError(f"no teleop script at {path}")
    return json.loads(path.read_text())


class ScriptedDevice(base.TeleopDevice):
    name = "scripted"
    help = "a scripted sequence of events and twists (--device-script FILE.json)"

    def __init__(self, script: Sequence[dict[str, Any]] | None = None, expert_fn: Callable | None = None):
        """``expert_fn() -> (twist, gripper_closed)`` drives the axes on ``expert`` steps."""
        if script is None:
            raise base.DeviceNotFoundError("the scripted device needs a script (--device-script FILE.json)")
        for i, step in enumerate(script):
            unknown = set(step) - STEP_KEYS
            if unknown:
                raise ValueError(f"teleop script step {i}: unknown keys {sorted(unknown)}; known: {sorted(STEP_KEYS)}")
            base.TeleopCommand(twist=step.get("twist", np.zeros(6)), events=tuple(step.get("events", ())))
        self._steps = [dict(s) for s in script]
        self._step = 0
        self._tick_in_step = 0
        self._gripper = False
        self.expert_fn = expert_fn
        self.tick = 0

    def connect(self) -> None:
        pass

    def read(self) -> base.TeleopCommand:
        self.tick += 1
        if self._step >= len(self._steps):
            return base.TeleopCommand(gripper_closed=self._gripper, events=(base.QUIT,))
        step = self._steps[self._step]
        if step.get("unplug"):
            raise base.DeviceDisconnectedError("the scripted device was unplugged")
        events = tuple(step.get("events", ())) if self._tick_in_step == 0 else ()
        if "gripper" in step:
            self._gripper = bool(step["gripper"])
        twist = np.asarray(step.get("twist", np.zeros(6)), dtype=np.float32)
        if step.get("expert"):
            if self.expert_fn is None:
                raise ValueError("an 'expert' script step needs a task with a scripted expert (expert_fn)")
            twist, self._gripper = self.expert_fn()
        self._tick_in_step += 1
        if self._tick_in_step >= int(step.get("ticks", 1)):
            self._step, self._tick_in_step = self._step + 1, 0
        return base.TeleopCommand(twist=twist, gripper_closed=self._gripper, events=events)
