"""A RealSense color camera as a ROS 2 node, with realsense-ros's topic names.

Publishes, for ``camera_name:=camera`` (realsense-ros's defaults):
  /camera/camera/color/image_raw     sensor_msgs/Image, rgb8, stamped with the frame's time
  /camera/camera/color/camera_info   sensor_msgs/CameraInfo from the stream's intrinsics
  /diagnostics                       diagnostic_msgs/DiagnosticArray (rate, dropped frames)
both images and info with reliable QoS, depth 2. Frames are read on a capture thread so a
slow camera never blocks the executor. It exists because realsense-ros is not on PyPI; on a
robot PC with realsense2_camera installed, that node offers the same topics.

    python -m vla_ros.camera_node --ros-args -p serial_no:=_123456789 -p width:=640 -p height:=480 -p fps:=30

``serial_no`` takes realsense-ros's leading underscore (it keeps a numeric serial a string).
``source:=software`` publishes a synthetic moving test pattern through librealsense's
software device instead of a camera: for tests and demos only, and the node says so loudly.
"""

from __future__ import annotations

import collections
import re
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from vla_ros.ros_util import image_to_msg, run_node

SOURCES = ("realsense", "software")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class CameraNodeConfig:
    serial_no: str = ""  # "" = the only connected device; realsense-ros style "_<serial>" accepted
    width: int = 640
    height: int = 480
    fps: int = 30
    camera_name: str = "camera"
    frame_id: str = ""  # "" = <camera_name>_color_optical_frame, as realsense-ros names it
    source: str = "realsense"
    timeout_ms: int = 1000
    rate_log_period_s: float = 5.0
    diagnostics_period_s: float = 1.0

    def __post_init__(self):
        for name in ("width", "height", "fps", "timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rate_log_period_s", "diagnostics_period_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; available: {', '.join(SOURCES)}")
        if not _NAME.match(self.camera_name):
            raise ValueError(f"camera_name must be a ROS name token (letters, digits, _), got {self.camera_name!r}")
        self.serial_no = self.serial_no.strip().removeprefix("_")
        if not self.frame_id:
            self.frame_id = f"{self.camera_name}_color_optical_frame"

    @property
    def image_topic(self) -> str:
        return f"/{self.camera_name}/{self.camera_name}/color/image_raw"

    @property
    def info_topic(self) -> str:
        return f"/{self.camera_name}/{self.camera_name}/color/camera_info"


class StampMapper:
    """Frame timestamp (s) -> ROS time (ns).

    Host-clock frames (system/global time) keep their age: stamp = ROS now - (wall now - t),
    which is also right under sim time. Device-clock frames get a fixed offset fixed at the
    first frame (the device clock has its own epoch).
    """

    def __init__(self):
        self._offset_ns: int | None = None

    def to_ros_ns(self, t_s: float, host_clock: bool, ros_now_ns: int, wall_now_s: float) -> int:
        if host_clock:
            return ros_now_ns - round((wall_now_s - t_s) * 1e9)
        if self._offset_ns is None:
            self._offset_ns = ros_now_ns - round(t_s * 1e9)
        return round(t_s * 1e9) + self._offset_ns


class RateWindow:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._prune(now)

    def rate(self, now: float) -> float:
        self._prune(now)
        return len(self._times) / self.window_s

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


def synthetic_pattern(base: np.ndarray, index: int) -> np.ndarray:
    """A moving synthetic image: a colour gradient scrolling right with a white bar, so motion is visible."""
    h, w, _ = base.shape
    shift = (4 * index) % w
    image = np.roll(base, shift, axis=1)
    bar = (8 * index) % w
    image[:, bar : bar + max(w // 40, 1)] = 255
    return image


def _base_pattern(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    return np.stack(np.broadcast_arrays(x, y, 255 - x), axis=-1).astype(np.uint8)


def camera_info_msg(intrinsics, frame_id: str):
    """sensor_msgs/CameraInfo from hardware.realsense.CameraIntrinsics (plumb_bob, as realsense-ros reports)."""
    from sensor_msgs.msg import CameraInfo

    i = intrinsics
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = i.width, i.height
    msg.distortion_model = "plumb_bob"
    msg.d = [float(c) for c in i.coeffs]
    msg.k = i.k()
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [i.fx, 0.0, i.ppx, 0.0, 0.0, i.fy, i.ppy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def _stamp(ns: int):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


class CameraNode:
    """Capture thread -> Image + CameraInfo publishers; timers for the rate log and diagnostics."""

    def __init__(self, node, config: CameraNodeConfig):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from hardware.realsense import RealSenseCamera, RealSenseConfig, SoftwareRealSense

        self.node, self.config = node, config
        self.log = node.get_logger()
        cam_config = RealSenseConfig(
            serial=config.serial_no or None,
            width=config.width,
            height=config.height,
            fps=config.fps,
            timeout_ms=config.timeout_ms,
        )
        self.software = None
        if config.source == "software":
            self.software = SoftwareRealSense.from_config(cam_config)
            self.log.warning(
                "source=software: publishing a SYNTHETIC moving test pattern from a librealsense software "
                "device, NOT a camera image. For tests and demos only; never run a robot on it."
            )
        self.camera = RealSenseCamera(cam_config, device=self.software)
        self.camera.connect()  # raises with the connected devices / supported profiles on a bad setup
        info = self.camera.device_info
        self.hardware_id = f"{info['name']} {info['serial']}".strip()
        self.info_template = camera_info_msg(self.camera.intrinsics(), config.frame_id)

        qos = QoSProfile(
            depth=2,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.image_pub = node.create_publisher(Image, config.image_topic, qos)
        self.info_pub = node.create_publisher(CameraInfo, config.info_topic, qos)
        self.diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.lock = threading.Lock()
        self.stamps = StampMapper()
        self.log_rate = RateWindow(config.rate_log_period_s)
        self.diag_rate = RateWindow(max(config.diagnostics_period_s, 2.0))
        self.frames = self.timeouts = self.published = 0
        self.last_frame_wall: float | None = None
        self.last_dropped = 0
        self.started = time.monotonic()
        self.fatal: str | None = None
        self.running = True
        node.create_timer(config.rate_log_period_s, self._log_rate)
        node.create_timer(config.diagnostics_period_s, self._publish_diagnostics)
        self.threads = [threading.Thread(target=self._capture, name="camera-capture", daemon=True)]
        if self.software is not None:
            self.threads.append(
                threading.Thread(target=self._feed_test_pattern, name="camera-software-feed", daemon=True)
            )
        self.log.info(
            f"{self.hardware_id}: {config.width}x{config.height}@{config.fps} rgb8 on {config.image_topic} "
            f"(frame_id {config.frame_id})"
        )

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    # ------------------------------------------------------------------ threads
    def _capture(self) -> None:
        import rclpy

        while self.running:
            try:
                rgb, t_s, _ = self.camera.read()
            except TimeoutError as err:
                if not self.running or not rclpy.ok():
                    return  # shutting down: the software feed (or the context) stopped first
                with self.lock:
                    self.timeouts += 1
                self.log.warning(str(err), throttle_duration_sec=5.0)
                continue
            except Exception as err:  # noqa: BLE001 - any camera failure ends the node loudly
                if not self.running:
                    return
                self.fatal = f"camera failed: {type(err).__name__}: {err}"
                self.log.fatal(self.fatal)
                self._publish_diagnostics()
                rclpy.try_shutdown()
                return
            now_ns = self.node.get_clock().now().nanoseconds
            stamp = _stamp(self.stamps.to_ros_ns(t_s, self.camera.host_clock_timestamps, now_ns, time.time()))
            image = image_to_msg(rgb, stamp, self.config.frame_id)
            info = self.info_template
            info.header.stamp = stamp
            try:
                self.image_pub.publish(image)
                self.info_pub.publish(info)
            except Exception:  # noqa: BLE001 - the context went down under us (SIGINT) before shutdown()
                if self.running and rclpy.ok():
                    raise
                return
            wall = time.monotonic()
            with self.lock:
                self.frames += 1
                self.published += 1
                self.last_frame_wall = wall
                self.log_rate.tick(wall)
                self.diag_rate.tick(wall)

    def _feed_test_pattern(self) -> None:
        """Inject the synthetic pattern at the configured fps (paced to deadlines, re-anchored if late)."""
        base = _base_pattern(self.config.width, self.config.height)
        period = 1.0 / self.config.fps
        deadline = time.monotonic()
        index = 0
        while self.running:
            try:
                self.software.inject(synthetic_pattern(base, index))
            except RuntimeError:
                if not self.running:
                    return
                raise
            index += 1
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                deadline = time.monotonic()

    # ------------------------------------------------------------------ timers
    def _log_rate(self) -> None:
        now = time.monotonic()
        with self.lock:
            rate = self.log_rate.rate(now)
        self.log.info(
            f"{self.config.camera_name}: {rate:.1f} Hz (configured {self.config.fps}), frames {self.frames}, "
            f"dropped {self.camera.dropped_frames}, timeouts {self.timeouts}"
        )

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        now = time.monotonic()
        with self.lock:
            rate = self.diag_rate.rate(now)
            age = None if self.last_frame_wall is None else now - self.last_frame_wall
            frames, timeouts = self.frames, self.timeouts
        dropped = self.camera.dropped_frames
        new_drops, self.last_dropped = dropped - self.last_dropped, dropped
        warm = now - self.started > self.diag_rate.window_s
        status = DiagnosticStatus()
        status.name = f"{self.node.get_name()}: {self.config.camera_name} color"
        status.hardware_id = self.hardware_id
        stale = (age is None and warm) or (age is not None and age > self.config.timeout_ms / 1000.0)
        if self.fatal:
            status.level, status.message = DiagnosticStatus.ERROR, self.fatal
        elif stale:
            status.level, status.message = (
                DiagnosticStatus.ERROR,
                "no frames" if age is None else f"no frame for {age:.1f} s",
            )
        elif warm and rate < 0.8 * self.config.fps:
            status.level, status.message = DiagnosticStatus.WARN, f"rate {rate:.1f} Hz below {self.config.fps}"
        elif new_drops > 0:
            status.level, status.message = DiagnosticStatus.WARN, f"{new_drops} frame(s) dropped"
        else:
            status.level, status.message = DiagnosticStatus.OK, "streaming"
        values = {
            "source": self.config.source,
            "rate_hz": f"{rate:.2f}",
            "configured_fps": str(self.config.fps),
            "resolution": f"{self.config.width}x{self.config.height}",
            "frames": str(frames),
            "dropped_frames": str(dropped),
            "incomplete_framesets": str(self.camera.incomplete_framesets),
            "timeouts": str(timeouts),
            "last_frame_age_s": "none" if age is None else f"{age:.3f}",
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [status]
        try:
            self.diag_pub.publish(msg)
        except Exception:  # noqa: BLE001 - the context is already shut down
            pass

    def shutdown(self) -> None:
        self.running = False
        for thread in self.threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=2.0 + self.config.timeout_ms / 1000.0)
        self.camera.disconnect()


def _serial_hint(err: Exception) -> str:
    if "'serial_no'" in str(err) and "expecting type 'STRING'" in str(err):
        return " (pass a numeric serial as serial_no:=_<serial>, as realsense-ros does)"
    return ""


def main(args: list[str] | None = None) -> int:
    return run_node("camera_node", CameraNodeConfig, CameraNode, num_threads=2, args=args, explain=_serial_hint)


if __name__ == "__main__":
    sys.exit(main())
