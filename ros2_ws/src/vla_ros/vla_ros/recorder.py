"""Record ROS 2 topics into a rosbag2 MCAP directory, on machines without rosbag2.

Usage:
    python -m vla_ros.recorder --ros-args -p output_dir:=data/bags/run1 \
        --params-file launch/params/recorder.yaml

rosbag2 is not installable from PyPI; ``rosbags`` writes the same on-disk format
(metadata.yaml + one .mcap file), readable by ``ros2 bag`` on a robot PC, Foxglove and
``rosbags.rosbag2.Reader``. Subscriptions are raw (serialized CDR bytes are stored as they came
off the wire, no deserialization), callbacks only enqueue into a bounded queue, and one writer
thread does the disk I/O, so a slow disk drops (and counts) messages instead of stalling the
executor. Each topic's type comes from the graph and its RIHS01 type hash from the publisher's
endpoint info, so the bag's metadata matches what rclpy put on the wire. SIGINT/SIGTERM drain the
queue and close the bag (metadata.yaml written), so an interrupted recording keeps what it got.
"""

from __future__ import annotations

import importlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TOPICS: tuple[str, ...] = (
    "/camera/camera/color/image_raw",
    "/wrist_camera/wrist_camera/color/image_raw",
    "/joint_states",
    "/fr3_arm_controller/joint_trajectory",
    "/task_instruction",
    "/diagnostics",
    "/vla/policy_events",
)
STORAGES: tuple[str, ...] = ("mcap",)
BAG_VERSION = 9  # rosbag2 metadata version written by ROS 2 Jazzy


@dataclass
class RecorderConfig:
    """The recorder node's parameters (one ROS parameter per field)."""

    output_dir: str = ""  # a new directory; "" = ./rosbag2_<date>-<time>, as `ros2 bag record` names it
    topics: tuple[str, ...] = DEFAULT_TOPICS  # empty = DEFAULT_TOPICS
    max_queue: int = 1000  # messages buffered between the callbacks and the writer thread
    storage: str = "mcap"
    discovery_period_s: float = 0.5  # how often to look for topics not yet subscribed
    stats_period_s: float = 10.0  # how often to log per-topic counts; 0 = only at the end

    def __post_init__(self):
        self.topics = tuple(self.topics) or DEFAULT_TOPICS
        if self.storage not in STORAGES:
            raise ValueError(f"storage {self.storage!r} is not supported; supported: {', '.join(STORAGES)}")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ValueError(f"max_queue must be a positive integer, got {self.max_queue!r}")
        if self.discovery_period_s <= 0:
            raise ValueError(f"discovery_period_s must be positive, got {self.discovery_period_s}")
        if self.stats_period_s < 0:
            raise ValueError(f"stats_period_s must be >= 0, got {self.stats_period_s}")
        bad = [t for t in self.topics if not t.startswith("/") or t.endswith("/") or " " in t]
        if bad:
            raise ValueError(f"topics must be absolute names like /joint_states; got {bad}")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError(f"topics has duplicates: {list(self.topics)}")
        if self.output_dir and Path(self.output_dir).exists():
            raise ValueError(
                f"output_dir {self.output_dir} exists already; refusing to overwrite a recording: "
                "choose a new directory"
            )

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path(time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S"))


# --------------------------------------------------------------------------- type definitions
@dataclass(frozen=True)
class TypeDefinition:
    """What a bag stores about a message type: its concatenated .msg text and RIHS01 hash."""

    msgtype: str
    msgdef: str
    rihs01: str


def ament_prefixes() -> list[Path]:
    return [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]


def _find_msg_file(msgtype: str, prefixes: list[Path]) -> Path | None:
    pkg, kind, name = msgtype.split("/")
    for prefix in prefixes:
        candidate = prefix / "share" / pkg / kind / f"{name}.msg"
        if candidate.is_file():
            return candidate
    return None


def type_definition(msgtype: str, *, prefixes: list[Path] | None = None, bundled: bool = True) -> TypeDefinition:
    """Message definition and RIHS01 hash of ``msgtype`` ('pkg/msg/Name').

    Uses rosbags' bundled ROS 2 Jazzy type store first (``bundled``), then the ``.msg`` files of
    the installed packages (``AMENT_PREFIX_PATH``/share/<pkg>/msg), e.g. interface packages built
    in this workspace. Raises ValueError naming where it looked when the type is nowhere.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"message type names look like 'sensor_msgs/msg/Image'; got {msgtype!r}")
    prefixes = ament_prefixes() if prefixes is None else prefixes
    store = get_typestore(Stores.ROS2_JAZZY if bundled else Stores.EMPTY)

    pending = [msgtype]
    while pending:  # register the type and every nested type the store lacks, from .msg files
        typename = pending.pop()
        if typename in store.fielddefs:
            continue
        path = _find_msg_file(typename, prefixes)
        if path is None:
            where = ", ".join(str(p / "share") for p in prefixes) or "(AMENT_PREFIX_PATH is empty)"
            raise ValueError(
                f"no definition for message type {typename!r}: not in rosbags' Jazzy types and "
                f"no {typename.split('/')[0]}/msg/{typename.split('/')[2]}.msg under {where}"
            )
        types = get_types_from_msg(path.read_text(), typename)
        store.register(types)
        for _, (_, fields) in types.items():
            for _, fdesc in fields:
                pending.extend(_nested_names(fdesc))
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return TypeDefinition(msgtype, msgdef, store.hash_rihs01(msgtype))


def _nested_names(fdesc: Any) -> list[str]:
    """Names of message types a rosbags field description refers to (plain, array or sequence)."""
    from rosbags.typesys.base import Nodetype

    kind, detail = fdesc
    if kind == Nodetype.NAME:
        return [detail]
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return _nested_names(detail[0])
    return []


# --------------------------------------------------------------------------- QoS
def qos_to_rosbags(profile: Any) -> Any:
    """rclpy QoSProfile -> rosbags Qos (the offered_qos_profiles entry of metadata.yaml)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def t(duration: Any) -> QosTime:
        sec, nsec = divmod(int(duration.nanoseconds), 1_000_000_000)
        return QosTime(sec, nsec)

    return Qos(
        history=QosHistory[profile.history.name],
        depth=int(profile.depth),
        reliability=QosReliability[profile.reliability.name],
        durability=QosDurability[profile.durability.name],
        deadline=t(profile.deadline),
        lifespan=t(profile.lifespan),
        liveliness=QosLiveliness[profile.liveliness.name],
        liveliness_lease_duration=t(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def subscription_qos(offered: list[Any], depth: int = 100) -> Any:
    """A QoS that matches every offering publisher, as rosbag2 picks it.

    Reliable only if all publishers are reliable (a reliable reader does not match a best-effort
    writer); transient-local only if all are (late-joining latched data is then recorded too).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    latched = bool(offered) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


# --------------------------------------------------------------------------- bag writer
@dataclass
class TopicStats:
    messages: int = 0
    bytes: int = 0
    dropped: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    def rate_hz(self) -> float:
        if self.messages < 2 or self.first_ns is None or self.last_ns is None or self.last_ns <= self.first_ns:
            return 0.0
        return (self.messages - 1) / ((self.last_ns - self.first_ns) * 1e-9)

    def describe(self) -> str:
        text = f"{self.messages} msgs, {self.rate_hz():.1f} msg/s, {self.bytes / 1e6:.2f} MB"
        return text + (f", {self.dropped} dropped (queue full)" if self.dropped else "")


class BagWriter:
    """A rosbags MCAP writer behind a bounded queue and one writer thread.

    ``submit`` never blocks: when the queue is full the message is dropped and counted. ``close``
    drains the queue, then writes the MCAP summary and metadata.yaml.
    """

    def __init__(self, path: Path, max_queue: int):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()  # rosbags' Writer is not thread-safe
        self._connections: dict[str, Any] = {}
        self.stats: dict[str, TopicStats] = {}
        self._thread = threading.Thread(target=self._run, name="bag-writer", daemon=True)
        self._closed = False
        self.error: Exception | None = None  # a write that failed (disk full, ...) stops the writer thread

    def start(self) -> None:
        self._thread.start()

    def add_topic(self, topic: str, typedef: TypeDefinition, offered_qos: list[Any] = ()) -> None:
        with self._lock:
            self._connections[topic] = self._writer.add_connection(
                topic,
                typedef.msgtype,
                msgdef=typedef.msgdef,
                rihs01=typedef.rihs01,
                serialization_format="cdr",
                offered_qos_profiles=list(offered_qos),
            )
        self.stats.setdefault(topic, TopicStats())

    def submit(self, topic: str, timestamp_ns: int, data: bytes) -> bool:
        """Queue one serialized message; False (and counted as dropped) if the queue is full."""
        try:
            self._queue.put_nowait((topic, timestamp_ns, data))
            return True
        except queue.Full:
            self.stats[topic].dropped += 1
            return False

    def queued(self) -> int:
        return self._queue.qsize()

    def _write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        with self._lock:
            self._writer.write(self._connections[topic], timestamp_ns, data)
        s = self.stats[topic]
        s.messages += 1
        s.bytes += len(data)
        s.first_ns = timestamp_ns if s.first_ns is None else s.first_ns
        s.last_ns = timestamp_ns

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except Exception as err:  # noqa: BLE001 - reported by the node, which then stops
                self.error = err
                return

    def close(self) -> dict[str, TopicStats]:
        """Write what is queued, then the MCAP summary and metadata.yaml. Idempotent."""
        if self._closed:
            return self.stats
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        while self.error is None:  # never started, or items that raced in after the sentinel
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._write(*item)
        with self._lock:
            self._writer.close()
        return self.stats


# --------------------------------------------------------------------------- node
def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (the Python type support rclpy needs)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"cannot import the Python type of {msgtype!r} ({err}); is its package installed and on PYTHONPATH?"
        ) from err


class Recorder:
    """Discovers the configured topics, subscribes raw, and feeds a BagWriter."""

    def __init__(self, node: Any, config: RecorderConfig):
        self.node, self.config = node, config
        self.log = node.get_logger()
        self.path = config.resolved_output_dir()
        if self.path.exists():
            raise ValueError(f"output_dir {self.path} exists already; refusing to overwrite a recording")
        self.bag = BagWriter(self.path, config.max_queue)
        self.bag.start()
        self.pending: list[str] = list(config.topics)
        self.subscriptions: dict[str, Any] = {}
        self._waiting_logged = 0.0
        self._start = time.monotonic()
        self.failed = False
        self.log.info(f"recording to {self.path} (mcap); topics: {', '.join(config.topics)}")
        self._discover_timer = node.create_timer(config.discovery_period_s, self.discover)
        self._health_timer = node.create_timer(0.5, self.check_writer)
        self._stats_timer = node.create_timer(config.stats_period_s, self.log_stats) if config.stats_period_s else None
        self.discover()

    def discover(self) -> None:
        """Subscribe to every pending topic that now has a publisher (retried on a timer)."""
        if not self.pending:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = graph.get(topic)
            publishers = self.node.get_publishers_info_by_topic(topic) if types else []
            if not publishers:
                continue
            if len(types) > 1:
                self.log.error(f"{topic} is published with several types {types}; recording {types[0]} only")
            try:
                self._subscribe(topic, types[0], publishers)
            except ValueError as err:
                self.log.error(f"cannot record {topic}: {err}")
            self.pending.remove(topic)
        now = time.monotonic()
        if self.pending and now - self._waiting_logged > 10.0:
            self._waiting_logged = now
            self.log.info(f"waiting for publishers on {', '.join(self.pending)}")

    def _subscribe(self, topic: str, msgtype: str, publishers: list[Any]) -> None:
        typedef = type_definition(msgtype)
        wire = str(publishers[0].topic_type_hash)
        if wire.startswith("RIHS01_") and wire != typedef.rihs01:
            self.log.warning(
                f"{topic}: the publisher's type hash {wire} differs from the local definition of "
                f"{msgtype} ({typedef.rihs01}); the bag records the publisher's hash"
            )
            typedef = TypeDefinition(msgtype, typedef.msgdef, wire)
        offered = [p.qos_profile for p in publishers]
        qos = subscription_qos(offered)
        self.bag.add_topic(topic, typedef, [qos_to_rosbags(p) for p in offered])
        clock = self.node.get_clock()
        bag, log = self.bag, self.log

        def on_message(data: bytes) -> None:
            if not bag.submit(topic, clock.now().nanoseconds, data):
                log.warning(
                    f"writer queue full ({self.config.max_queue}): dropping {topic} messages "
                    f"({bag.stats[topic].dropped} so far)",
                    throttle_duration_sec=5.0,
                )

        self.subscriptions[topic] = self.node.create_subscription(
            message_class(msgtype), topic, on_message, qos, raw=True
        )
        self.log.info(f"recording {topic} [{msgtype}] ({qos.reliability.name.lower()}, {len(publishers)} publisher(s))")

    def check_writer(self) -> None:
        if self.bag.error is not None and not self.failed:
            self.failed = True
            self.log.fatal(f"writing {self.path} failed: {self.bag.error!r}; stopping")

    def log_stats(self) -> None:
        elapsed = time.monotonic() - self._start
        lines = [f"{topic}: {stats.describe()}" for topic, stats in self.bag.stats.items()]
        self.log.info(
            f"{elapsed:.0f} s recorded, queue {self.bag.queued()}/{self.config.max_queue}; "
            + ("; ".join(lines) if lines else "no topics yet")
        )

    @property
    def fatal(self) -> bool:
        return self.failed

    def shutdown(self) -> None:
        self.close()

    def close(self) -> dict[str, TopicStats]:
        for sub in self.subscriptions.values():
            try:
                self.node.destroy_subscription(sub)
            except Exception:  # noqa: BLE001 - after a signal the context is gone; the bag still closes
                pass
        self.subscriptions.clear()
        stats = self.bag.close()
        total = sum(s.messages for s in stats.values())
        self.log.info(f"closed {self.path}: {total} messages in {len(stats)} topic(s)")
        for topic, s in stats.items():
            self.log.info(f"  {topic}: {s.describe()}")
        if self.pending:
            self.log.warning(f"never saw a publisher on: {', '.join(self.pending)}")
        return stats


def main(args: list[str] | None = None) -> int:
    from vla_ros.ros_util import run_node

    # rclpy's handlers turn SIGINT and SIGTERM into a clean end of the spin; run_node then calls
    # shutdown(), which closes the bag. A writer failure sets `fatal` and stops the node (exit 1).
    return run_node("recorder", RecorderConfig, Recorder, num_threads=1, args=args)


if __name__ == "__main__":
    sys.exit(main())
