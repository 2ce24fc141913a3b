"""Intel RealSense color (and optional aligned depth) capture with pyrealsense2, no ROS.

Two ways in, one frame-handling path out:

* a real camera: ``rs.pipeline`` + ``rs.config.enable_device(serial)`` +
  ``enable_stream(color, w, h, rgb8, fps)``, frames from ``pipeline.try_wait_for_frames``;
* a :class:`SoftwareRealSense` (``rs.software_device``): librealsense's own synthetic
  device, whose sensors are opened at the requested profile and started into an
  ``rs.syncer``; injected frames come back as real ``rs.frame`` objects.

Both hand a ``rs.composite_frame`` to the same code, which checks the profile, converts to
numpy, turns the millisecond timestamp into seconds and counts frame-number gaps as drops.
Nothing falls back silently: a missing device, an unsupported resolution/fps or a frame of
the wrong shape is an error (a robot must not run on a camera it was not configured for).

pyrealsense2 is imported lazily; importing this module needs only numpy.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CameraIntrinsics",
    "RealSenseCamera",
    "RealSenseConfig",
    "SoftwareRealSense",
    "check_profile",
    "choose_device",
    "frame_gap",
    "list_devices",
]

HOST_CLOCK_DOMAINS = ("system_time", "global_time")  # timestamps in host-epoch milliseconds


def _rs():
    """pyrealsense2, imported on first use (its import needs Debian's libusb-1.0-0)."""
    try:
        import pyrealsense2 as rs
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"pyrealsense2 is needed for RealSense cameras: pip install pyrealsense2 "
            f"(and apt-get install libusb-1.0-0): {err}"
        ) from err
    return rs


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class RealSenseConfig:
    """What to open. ``serial=None`` means "the only connected device"."""

    serial: str | None = None
    width: int = 640
    height: int = 480
    fps: int = 30
    enable_depth: bool = False  # z16 depth at the same size, aligned to color (read_rgbd)
    timeout_ms: int = 1000  # read() raises TimeoutError after this long without a frame

    def __post_init__(self):
        if self.serial is not None and (not isinstance(self.serial, str) or not self.serial.strip()):
            raise ValueError(f"serial must be a non-empty string or None (the only device), got {self.serial!r}")
        for name in ("width", "height", "fps", "timeout_ms"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.enable_depth, bool):
            raise ValueError(f"enable_depth must be a bool, got {self.enable_depth!r}")


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the color stream as librealsense reports them."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str  # librealsense distortion name, e.g. "inverse_brown_conrady", "none"
    coeffs: tuple[float, ...]

    def k(self) -> list[float]:
        """Row-major 3x3 camera matrix (sensor_msgs/CameraInfo.k)."""
        return [self.fx, 0.0, self.ppx, 0.0, self.fy, self.ppy, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- pure helpers
def _fmt_profiles(profiles) -> str:
    return ", ".join(f"{w}x{h}@{f}" for w, h, f in sorted(set(profiles))) or "none"


def check_profile(supported, width: int, height: int, fps: int, what: str = "color rgb8") -> None:
    """Refuse a (width, height, fps) the device does not offer, listing what it does offer."""
    if (width, height, fps) not in set(supported):
        raise ValueError(
            f"the RealSense device does not support {what} at {width}x{height}@{fps}; "
            f"supported {what} profiles: {_fmt_profiles(supported)}"
        )


def choose_device(devices: list[dict], serial: str | None) -> int:
    """Index of the device to open among ``list_devices()`` entries; never guesses between several."""
    serials = [d["serial"] for d in devices]
    if not devices:
        raise RuntimeError(f"no RealSense device found; connected: {serials}")
    if serial is None:
        if len(devices) > 1:
            raise RuntimeError(
                f"several RealSense devices connected: {serials}; choose one with RealSenseConfig(serial=...)"
            )
        return 0
    if serial not in serials:
        raise RuntimeError(f"no RealSense device with serial {serial!r}; connected: {serials}")
    return serials.index(serial)


def frame_gap(previous: int | None, current: int) -> int:
    """Frames lost between two consecutive frame numbers (0 for the first frame or a counter reset)."""
    if previous is None or current <= previous:
        return 0
    return current - previous - 1


# --------------------------------------------------------------------------- device queries
def _device_info(rs, device) -> dict:
    def info(key):
        return device.get_info(key) if device.supports(key) else ""

    return {
        "serial": info(rs.camera_info.serial_number),
        "name": info(rs.camera_info.name),
        "firmware": info(rs.camera_info.firmware_version),
    }


def list_devices() -> list[dict]:
    """Connected RealSense devices as ``{"serial", "name", "firmware"}`` dicts."""
    rs = _rs()
    return [_device_info(rs, d) for d in rs.context().query_devices()]


def _video_profiles(device, stream, fmt) -> list[tuple[Any, Any]]:
    """(sensor, video profile) pairs of one stream type and format over all sensors of a device."""
    found = []
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() == stream and profile.format() == fmt and profile.is_video_stream_profile():
                found.append((sensor, profile.as_video_stream_profile()))
    return found


def _sizes(pairs) -> list[tuple[int, int, int]]:
    return [(p.width(), p.height(), p.fps()) for _, p in pairs]


def _intrinsics(profile) -> CameraIntrinsics:
    i = profile.as_video_stream_profile().get_intrinsics()
    return CameraIntrinsics(
        width=int(i.width),
        height=int(i.height),
        fx=float(i.fx),
        fy=float(i.fy),
        ppx=float(i.ppx),
        ppy=float(i.ppy),
        model=str(i.model).split(".")[-1],
        coeffs=tuple(float(c) for c in i.coeffs),
    )


# --------------------------------------------------------------------------- the camera
class RealSenseCamera:
    """One RealSense color stream (optionally with aligned depth), read frame by frame.

    ``device=None`` opens a real camera through ``rs.pipeline``; ``device=SoftwareRealSense(...)``
    opens librealsense's software device instead (tests and demos). Either way ``read()``
    returns ``(rgb uint8 HxWx3, timestamp_s, frame_number)`` and keeps counters:
    ``frames_read``, ``dropped_frames`` (frame-number gaps), ``incomplete_framesets``.
    """

    list_devices = staticmethod(list_devices)

    def __init__(self, config: RealSenseConfig | None = None, device: SoftwareRealSense | None = None):
        self.config = config if config is not None else RealSenseConfig()
        if not isinstance(self.config, RealSenseConfig):
            raise TypeError(f"config must be a RealSenseConfig, got {type(self.config).__name__}")
        if device is not None and not isinstance(device, SoftwareRealSense):
            raise TypeError(f"device must be a SoftwareRealSense or None (a real camera), got {type(device).__name__}")
        self._software = device
        self._wait = None  # callable(timeout_ms) -> (ok, composite_frame)
        self._stop = None  # callable() that stops streaming
        self._align = None
        self._color_profile = None
        self._device_info: dict | None = None
        self._last_frame_number: int | None = None
        self.frames_read = 0
        self.dropped_frames = 0
        self.incomplete_framesets = 0
        self.timestamp_domain = ""

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        return self._wait is not None

    @property
    def serial(self) -> str | None:
        return self._device_info["serial"] if self._device_info else self.config.serial

    @property
    def device_info(self) -> dict:
        if self._device_info is None:
            raise RuntimeError("not connected: call connect() first")
        return dict(self._device_info)

    def connect(self) -> RealSenseCamera:
        if self.connected:
            raise RuntimeError(f"RealSense {self.serial} is already connected")
        rs = _rs()
        self._last_frame_number = None
        self.frames_read = self.dropped_frames = self.incomplete_framesets = 0
        if self._software is None:
            self._connect_pipeline(rs)
        else:
            self._connect_software(rs)
        self._align = rs.align(rs.stream.color) if self.config.enable_depth else None
        return self

    def _check_profiles(self, rs, device) -> list:
        """Validate the requested profile(s) against the device; returns the matching (sensor, profile) pairs."""
        c = self.config
        wanted = [(rs.stream.color, rs.format.rgb8, "color rgb8")]
        if c.enable_depth:
            wanted.append((rs.stream.depth, rs.format.z16, "depth z16"))
        chosen = []
        for stream, fmt, what in wanted:
            pairs = _video_profiles(device, stream, fmt)
            sizes = _sizes(pairs)
            check_profile(sizes, c.width, c.height, c.fps, what)
            chosen.append(pairs[sizes.index((c.width, c.height, c.fps))])
        return chosen

    def _connect_pipeline(self, rs) -> None:
        c = self.config
        ctx = rs.context()
        devices = list(ctx.query_devices())
        infos = [_device_info(rs, d) for d in devices]
        index = choose_device(infos, c.serial)
        self._check_profiles(rs, devices[index])
        serial = infos[index]["serial"]
        cfg = rs.config()
        cfg.enable_device(serial)
        cfg.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        if c.enable_depth:
            cfg.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        pipeline = rs.pipeline(ctx)
        profile = pipeline.start(cfg)
        self._color_profile = profile.get_stream(rs.stream.color)
        self._device_info = infos[index]
        self._wait = pipeline.try_wait_for_frames
        self._stop = pipeline.stop

    def _connect_software(self, rs) -> None:
        sw = self._software
        if self.config.serial is not None and self.config.serial != sw.serial:
            raise RuntimeError(f"no RealSense device with serial {self.config.serial!r}; connected: {[sw.serial]}")
        chosen = self._check_profiles(rs, sw.device)
        syncer = rs.syncer(2)
        opened = []
        try:
            for sensor, profile in chosen:
                sensor.open(profile)
                opened.append(sensor)
                sensor.start(syncer)
        except Exception:
            for sensor in opened:
                _quietly(sensor.stop)
                _quietly(sensor.close)
            raise

        def stop():
            for sensor in opened:
                _quietly(sensor.stop)
                _quietly(sensor.close)

        self._color_profile = chosen[0][1]
        self._device_info = _device_info(rs, sw.device)
        self._wait = syncer.try_wait_for_frames
        self._stop = stop
        sw._attached(self)

    def disconnect(self) -> None:
        """Stop streaming; safe to call twice."""
        stop, self._wait, self._stop = self._stop, None, None
        if stop is not None:
            stop()
        if self._software is not None:
            self._software._attached(None)

    def __enter__(self) -> RealSenseCamera:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            _quietly(self.disconnect)

    def intrinsics(self) -> CameraIntrinsics:
        """Color-stream intrinsics (aligned depth shares them)."""
        if self._color_profile is None:
            raise RuntimeError("not connected: call connect() first")
        return _intrinsics(self._color_profile)

    @property
    def host_clock_timestamps(self) -> bool:
        """True when frame timestamps are host-epoch (system/global time), False for the device clock."""
        return self.timestamp_domain in HOST_CLOCK_DOMAINS

    # ------------------------------------------------------------------ frames
    def read(self) -> tuple[np.ndarray, float, int]:
        """Next color frame: (rgb uint8 HxWx3, timestamp_s, frame_number)."""
        rgb, _, stamp, number = self._read(want_depth=False)
        return rgb, stamp, number

    def read_rgbd(self) -> tuple[np.ndarray, np.ndarray, float, int]:
        """Next color frame and depth aligned to it: (rgb, depth_m float32 HxW, timestamp_s, frame_number)."""
        if not self.config.enable_depth:
            raise RuntimeError("read_rgbd() needs RealSenseConfig(enable_depth=True)")
        return self._read(want_depth=True)

    def _read(self, want_depth: bool):
        if self._wait is None:
            raise RuntimeError("not connected: call connect() first")
        color, depth = self._next_frames()
        rgb = frame_to_rgb(color, self.config.width, self.config.height)
        depth_m = frame_to_depth_m(depth, self.config.width, self.config.height) if want_depth else None
        number = int(color.get_frame_number())
        self.timestamp_domain = str(color.get_frame_timestamp_domain()).split(".")[-1]
        self.dropped_frames += frame_gap(self._last_frame_number, number)
        self._last_frame_number = number
        self.frames_read += 1
        return rgb, depth_m, float(color.get_timestamp()) / 1000.0, number

    def _next_frames(self):
        """Wait for a frameset holding every enabled stream; partial ones (stream start-up) are skipped."""
        deadline = time.monotonic() + self.config.timeout_ms / 1000.0
        while True:
            remaining_ms = int(max(deadline - time.monotonic(), 0.0) * 1000)
            ok, frames = self._wait(max(remaining_ms, 1))
            if not ok:
                raise TimeoutError(
                    f"no frame from RealSense {self.serial} within {self.config.timeout_ms} ms "
                    f"({self.config.width}x{self.config.height}@{self.config.fps})"
                )
            color = frames.get_color_frame()
            depth = frames.get_depth_frame() if self._align is not None else None
            if not color or (self._align is not None and not depth):
                self.incomplete_framesets += 1
                continue
            if self._align is not None:
                frames = self._align.process(frames)
                color, depth = frames.get_color_frame(), frames.get_depth_frame()
            return color, depth


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - cleanup of an already-failed or stopped sensor
        pass


def frame_to_rgb(frame, width: int, height: int) -> np.ndarray:
    """A librealsense rgb8 video frame -> an owned (H, W, 3) uint8 array; any other format or size is refused."""
    fmt = str(frame.get_profile().format()).split(".")[-1]
    vf = frame.as_video_frame()
    w, h, stride = vf.get_width(), vf.get_height(), vf.get_stride_in_bytes()
    if fmt != "rgb8" or (w, h) != (width, height):
        raise ValueError(f"expected a {width}x{height} rgb8 color frame, got {w}x{h} {fmt}")
    rows = np.frombuffer(vf.get_data(), dtype=np.uint8, count=h * stride).reshape(h, stride)
    return rows[:, : w * 3].reshape(h, w, 3).copy()


def frame_to_depth_m(frame, width: int, height: int) -> np.ndarray:
    """A librealsense z16 depth frame -> (H, W) float32 metres (0 = no depth)."""
    df = frame.as_depth_frame()
    w, h, stride = df.get_width(), df.get_height(), df.get_stride_in_bytes()
    if (w, h) != (width, height):
        raise ValueError(f"expected a {width}x{height} depth frame, got {w}x{h}")
    rows = np.frombuffer(df.get_data(), dtype=np.uint16, count=h * stride // 2).reshape(h, stride // 2)
    return rows[:, :w].astype(np.float32) * np.float32(df.get_units())


# --------------------------------------------------------------------------- software device
class SoftwareRealSense:
    """librealsense's ``rs.software_device`` with a color sensor (and optionally depth) at one profile.

    Frames given to :meth:`inject` go through librealsense (``software_sensor.on_video_frame``)
    and reach a :class:`RealSenseCamera` opened with ``device=this`` as real ``rs.frame``
    objects, so the camera's frame handling is exercised exactly as with hardware.
    Timestamps are host time (``system_time`` domain), as a D400 with global time reports.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        *,
        serial: str = "000000000001",
        name: str = "Software RealSense",
        enable_depth: bool = False,
        depth_units: float = 0.001,
    ):
        for key, value in (("width", width), ("height", height), ("fps", fps)):
            _positive_int(key, value)
        if not isinstance(serial, str) or not serial:
            raise ValueError(f"serial must be a non-empty string, got {serial!r}")
        if not (isinstance(depth_units, (int, float)) and math.isfinite(depth_units) and depth_units > 0):
            raise ValueError(f"depth_units must be a positive finite number of metres, got {depth_units!r}")
        rs = _rs()
        self.width, self.height, self.fps = width, height, fps
        self.serial = serial
        self.depth_units = float(depth_units)
        self._lock = threading.Lock()
        self._next_number = 1
        self._camera: RealSenseCamera | None = None
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, name)
        self.device.register_info(rs.camera_info.firmware_version, "software")
        # A D400-like field of view (~69 deg horizontal); color uses inverse Brown-Conrady as D400 color does.
        self._color_sensor = self.device.add_sensor("RGB Camera")
        self._color_profile = self._add_stream(
            rs, self._color_sensor, rs.stream.color, rs.format.rgb8, 3, uid=0, model=rs.distortion.inverse_brown_conrady
        )
        self._depth_sensor = self._depth_profile = None
        if enable_depth:
            self._depth_sensor = self.device.add_sensor("Stereo Module")
            self._depth_profile = self._add_stream(
                rs, self._depth_sensor, rs.stream.depth, rs.format.z16, 2, uid=1, model=rs.distortion.brown_conrady
            )
            self._depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_units)
            identity = rs.extrinsics()
            identity.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            identity.translation = [0.0, 0.0, 0.0]
            self._depth_profile.register_extrinsics_to(self._color_profile, identity)

    def _add_stream(self, rs, sensor, stream, fmt, bpp: int, uid: int, model):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = stream, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = self.width, self.height, self.fps, bpp, fmt
        intr = rs.intrinsics()
        intr.width, intr.height = self.width, self.height
        intr.fx = intr.fy = 0.95 * self.width
        intr.ppx, intr.ppy = self.width / 2.0, self.height / 2.0
        intr.model = model
        intr.coeffs = [0.0] * 5
        vs.intrinsics = intr
        return sensor.add_video_stream(vs, True).as_video_stream_profile()

    @classmethod
    def from_config(cls, config: RealSenseConfig, **kwargs) -> SoftwareRealSense:
        """A software device offering exactly the profile (and serial) a config asks for."""
        if config.serial is not None:
            kwargs.setdefault("serial", config.serial)
        return cls(config.width, config.height, config.fps, enable_depth=config.enable_depth, **kwargs)

    def _attached(self, camera: RealSenseCamera | None) -> None:
        self._camera = camera

    @property
    def streaming(self) -> bool:
        return self._camera is not None and self._camera.connected

    def inject(
        self,
        rgb: np.ndarray,
        timestamp_s: float | None = None,
        frame_number: int | None = None,
        depth_m: np.ndarray | None = None,
    ) -> int:
        """Send one frame (and its depth) into librealsense; returns the frame number used.

        ``timestamp_s`` defaults to the host time now, ``frame_number`` to the previous one + 1.
        """
        if not self.streaming:
            raise RuntimeError("SoftwareRealSense is not streaming: connect a RealSenseCamera(device=...) to it first")
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"rgb must be uint8 of shape {(self.height, self.width, 3)}, got {rgb.dtype} {rgb.shape}")
        z16 = None
        if self._depth_sensor is not None:
            if depth_m is None:
                raise ValueError("this SoftwareRealSense has a depth stream: pass depth_m with every frame")
            depth_m = np.asarray(depth_m, dtype=np.float64)
            if depth_m.shape != (self.height, self.width):
                raise ValueError(f"depth_m must have shape {(self.height, self.width)}, got {depth_m.shape}")
            if not np.all(np.isfinite(depth_m)) or depth_m.min() < 0 or depth_m.max() > 65535 * self.depth_units:
                raise ValueError(f"depth_m must be finite metres in [0, {65535 * self.depth_units:.3f}]")
            z16 = np.round(depth_m / self.depth_units).astype(np.uint16)
        elif depth_m is not None:
            raise ValueError("this SoftwareRealSense has no depth stream (enable_depth=False)")
        if timestamp_s is None:
            timestamp_s = time.time()
        if not math.isfinite(float(timestamp_s)):
            raise ValueError(f"timestamp_s must be finite, got {timestamp_s!r}")
        with self._lock:
            number = self._next_number if frame_number is None else int(frame_number)
            if number < 0:
                raise ValueError(f"frame_number must be >= 0, got {number}")
            self._next_number = number + 1
            rs = _rs()
            if z16 is not None:  # depth first: the syncer then pairs it with the color that follows
                self._send(rs, self._depth_sensor, self._depth_profile, z16, 2, timestamp_s, number)
            self._send(rs, self._color_sensor, self._color_profile, np.ascontiguousarray(rgb), 3, timestamp_s, number)
        return number

    def _send(self, rs, sensor, profile, pixels: np.ndarray, bpp: int, timestamp_s: float, number: int) -> None:
        frame = rs.software_video_frame()
        frame.pixels = pixels  # the binding copies the buffer
        frame.bpp = bpp
        frame.stride = self.width * bpp
        frame.timestamp = float(timestamp_s) * 1000.0
        frame.domain = rs.timestamp_domain.system_time
        frame.frame_number = number
        frame.profile = profile
        if bpp == 2:
            frame.depth_units = self.depth_units
        sensor.on_video_frame(frame)
