"""Canonical observation/action keys, shared by simulators, datasets, policies, ROS and the server.

Batched observations are dicts ``{key: array (B, ...)}``:

* ``observation.state``             float32 (B, D)   proprioception (joints, end effector, gripper)
* ``observation.environment_state`` float32 (B, E)   privileged task state (object poses); sim only
* ``observation.images.<camera>``   uint8 (B, H, W, 3) HWC RGB, top row first
* ``task``                          list[str] of length B: the language instruction

Actions are float32 ``(B, A)`` for one step or ``(B, H, A)`` for a chunk, in robot units.
"""

OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGE_PREFIX = "observation.images."
TASK = "task"
ACTION = "action"
REWARD = "next.reward"
SUCCESS = "next.success"
DONE = "next.done"

# Camera roles every suite maps its own cameras onto, so one policy config fits all suites.
CAMERA_SCENE = "scene"  # third-person view of the workspace
CAMERA_WRIST = "wrist"  # egocentric camera on the end effector


def image_key(camera: str) -> str:
    return f"{OBS_IMAGE_PREFIX}{camera}"


def camera_of(key: str) -> str:
    if not key.startswith(OBS_IMAGE_PREFIX):
        raise KeyError(f"{key!r} is not an image key (expected {OBS_IMAGE_PREFIX}<camera>)")
    return key[len(OBS_IMAGE_PREFIX) :]
