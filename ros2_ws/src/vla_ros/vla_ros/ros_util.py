"""Small helpers shared by the nodes: typed parameters, image messages, time."""

from __future__ import annotations

import copy
import dataclasses
import faulthandler
import io
import os
import signal
import subprocess
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C")
BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}  # every Jazzy node declares these


def declare_config[C](node, config_class: type[C], exclude: tuple[str, ...] = ()) -> C:
    """Declare one ROS parameter per leaf field of a config dataclass and build it from their values.

    A nested dataclass field is a group of dotted parameters (``safety.max_step_rad``; in YAML a
    ``safety:`` block under ``ros__parameters``); ``exclude`` names leaves the node sets itself.
    The dataclass's ``__post_init__`` validates, so a bad YAML value stops the node at start-up
    with the dataclass's message instead of surfacing mid-run. Tuples map to array parameters.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    values: dict[str, Any] = {}
    for name, (leaf, tp) in parameter_fields(config_class, exclude).items():
        default = leaf.default
        if default is None:  # ROS parameters are typed by their default: node configs use "" / 0.0 sentinels
            raise TypeError(f"{config_class.__name__}.{name} needs a non-None default to be a ROS parameter")
        if tp is float:  # accept integers from YAML (`period_s: 5`), refuse anything else
            node.declare_parameter(name, float(default), ParameterDescriptor(dynamic_typing=True))
            value = node.get_parameter(name).value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"parameter {name} must be a number, got {value!r}")
            values[name] = float(value)
            continue
        node.declare_parameter(name, list(default) if isinstance(default, tuple) else default)
        value = node.get_parameter(name).value
        if isinstance(default, tuple):  # an empty YAML array leaves the parameter unset: the default
            value = tuple(value) if value is not None else default
        values[name] = value
    # Values given on the command line or in a YAML file but never declared: a typo that would
    # otherwise be ignored silently (rclpy keeps them as overrides until something declares them).
    given = set(getattr(node, "_parameter_overrides", {})) | set(node.get_parameters_by_prefix("").keys())
    unknown = sorted(given - set(values) - BUILTIN_PARAMETERS - RUNTIME_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {node.get_name()}; available: {', '.join(values)}")
    return config_from_parameters(config_class, values)


def parameter_fields(
    config_cls: type, exclude: tuple[str, ...] = (), prefix: str = "", default: Any = None
) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The leaf fields of a config dataclass by dotted ROS parameter name (``safety.max_step_rad``),
    each a copy of the field named so, with the default it has in ``config_cls`` (a nested
    field's default is its value in the parent's default instance), and its type."""
    hints = typing.get_type_hints(config_cls)
    leaves: dict[str, tuple[dataclasses.Field, Any]] = {}
    for f in dataclasses.fields(config_cls):
        name = prefix + f.name
        if default is not None:
            value = getattr(default, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(hints[f.name]):
            leaves.update(parameter_fields(hints[f.name], exclude, name + ".", value))
            continue
        if name in exclude:
            continue
        leaf = copy.copy(f)
        leaf.name, leaf.default, leaf.default_factory = name, value, dataclasses.MISSING
        leaves[name] = (leaf, hints[f.name])
    return leaves


def config_from_parameters(config_cls: type, values: Mapping[str, Any]):
    """Nest dotted parameter values into ``config_cls``; a value not given keeps its default."""
    hints = typing.get_type_hints(config_cls)
    nested: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        head, dot, rest = name.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            kwargs[name] = value
    for head, sub in nested.items():
        if head not in hints or not dataclasses.is_dataclass(hints[head]):
            raise ValueError(f"{config_cls.__name__} has no nested config {head!r} (parameters {sorted(sub)})")
        kwargs[head] = config_from_parameters(hints[head], sub)
    return config_cls(**kwargs)


def _events_executor(num_threads: int):
    from rclpy.experimental import EventsExecutor

    return EventsExecutor()


def _multi_threaded_executor(num_threads: int):
    from rclpy.executors import MultiThreadedExecutor

    return MultiThreadedExecutor(num_threads=num_threads)


# Every node's ``executor`` parameter. rclpy's EventsExecutor (C++ event loop, one thread) is the
# default: with the policy node on a loaded 2-core machine it cut the p99 age of joint states at
# receipt from ~90 ms to ~18 ms and frame -> trajectory p99 from ~90 ms to ~20 ms against the
# Python MultiThreadedExecutor (README, "ROS 2 deployment"). Inference runs on its own thread
# either way, so a single-threaded executor never waits on the model.
EXECUTORS: dict[str, Callable[[int], Any]] = {"events": _events_executor, "multi_threaded": _multi_threaded_executor}
DEFAULT_EXECUTOR = "events"
RUNTIME_PARAMETERS = {"executor"}  # declared by run_node for every node, next to the node's own config
EXECUTOR_SHUTDOWN_TIMEOUT_S = 5.0
STACK_DUMP_SIGNAL = signal.SIGUSR1  # `kill -USR1 <pid>`: every thread's Python stack to stderr (the log)


def run_node[C](
    name: str,
    config_class: type[C],
    build: Callable[[Any, C], Any],
    *,
    num_threads: int = 4,
    args: list[str] | None = None,
    explain: Callable[[Exception], str] | None = None,
    default_executor: str = DEFAULT_EXECUTOR,
    node_set_parameters: tuple[str, ...] = (),
) -> int:
    """Every node's life: parameters -> typed config -> ``build(node, config)`` -> spin -> clean exit.

    The ``executor`` parameter picks the rclpy executor (``EXECUTORS``; ``num_threads`` is for
    ``multi_threaded``). Exit codes: 2 invalid parameters, 1 the node could not start (no camera,
    unreachable policy server, ...) or ended in a fatal state (``obj.fatal`` turned true: the spin stops), 0 after
    Ctrl-C or SIGTERM. Each failure is logged as one FATAL line and printed to stderr, so a
    launcher shows why a node is gone. ``build`` returns an object with optional ``start()``,
    ``shutdown()`` (always called, also after a signal) and ``fatal``. ``node_set_parameters``:
    dotted leaves of a nested config that ``build`` fills in itself, so they are not parameters.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    # a node that does not stop can be asked where it is stuck, even with the GIL held in C++
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True)
    rclpy.init(args=args if args is not None else sys.argv)
    node = rclpy.create_node(name)

    def fail(what: str, err: Exception, code: int) -> int:
        message = f"{node.get_name()}: {what}: {err}" + (explain(err) if explain else "")
        node.get_logger().fatal(message)
        print(message, file=sys.stderr, flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
        return code

    try:
        node.declare_parameter("executor", default_executor)
        executor_name = node.get_parameter("executor").value
        if executor_name not in EXECUTORS:
            raise ValueError(f"unknown executor {executor_name!r}; available: {', '.join(EXECUTORS)}")
        config = declare_config(node, config_class, exclude=node_set_parameters)
    except Exception as err:  # noqa: BLE001 - rclpy raises its own types for mistyped parameters
        return fail("invalid parameters", err, 2)
    try:
        obj = build(node, config)
    except Exception as err:  # noqa: BLE001 - whatever stops the start-up: say why and stop
        return fail("cannot start", err, 1)
    if hasattr(obj, "start"):
        obj.start()
    executor = EXECUTORS[executor_name](num_threads)
    executor.add_node(node)
    try:
        while node.context.ok() and not getattr(obj, "fatal", False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if hasattr(obj, "shutdown"):
            obj.shutdown()
        # Stop the executor (the EventsExecutor's timer thread) before destroying the entities it
        # serves: a node on the EventsExecutor once outlived SIGINT and SIGTERM at this point after
        # a 26-minute run and had to be SIGKILLed.
        executor.shutdown(timeout_sec=EXECUTOR_SHUTDOWN_TIMEOUT_S)
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if getattr(obj, "fatal", False) else 0


def stop_process_group(proc, timeout_s: float = 10.0) -> int:
    """Ctrl-C a node started with ``start_new_session=True`` (its whole group), SIGKILL if it hangs; its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


# --------------------------------------------------------------------------- images
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_msg(image: np.ndarray, stamp, frame_id: str = ""):
    from sensor_msgs.msg import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) rgb image, got {image.shape}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.step = 3 * msg.width
    msg.data = image.tobytes()
    return msg


def msg_to_image(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) rgb uint8; malformed messages raise ValueError."""
    if hasattr(msg, "format"):  # CompressedImage (jpeg/png)
        from PIL import Image as PILImage

        try:
            return np.asarray(PILImage.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
        except Exception as err:  # PIL raises several unrelated types for corrupt data
            raise ValueError(f"undecodable {msg.format!r} compressed image: {err}") from err
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(_CHANNELS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * channels or len(msg.data) != h * step:
        raise ValueError(f"malformed image: {w}x{h} {msg.encoding} step {step} with {len(msg.data)} bytes")
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(h, step)[:, : w * channels]
    image = rows.reshape(h, w, channels)
    if msg.encoding.startswith("bgr"):
        image = image[..., [2, 1, 0]]
    elif channels == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


# --------------------------------------------------------------------------- time
def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def s_to_stamp(t: float):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(round(t * 1e9)), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def s_to_duration(t: float):
    from builtin_interfaces.msg import Duration

    sec, nanosec = divmod(int(round(t * 1e9)), 1_000_000_000)
    return Duration(sec=sec, nanosec=nanosec)
