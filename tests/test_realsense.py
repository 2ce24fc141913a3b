"""RealSense capture through librealsense's own software device, and the ROS 2 camera node across processes.

No camera exists on CI machines: frames are injected into ``rs.software_device`` and come
back as real ``rs.frame`` objects through the same code a real camera's frames take.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyrealsense2")

from hardware.realsense import (  # noqa: E402
    RealSenseCamera,
    RealSenseConfig,
    SoftwareRealSense,
    check_profile,
    choose_device,
    frame_gap,
    list_devices,
)

REPO = Path(__file__).resolve().parents[1]
W, H, FPS = 64, 48, 30


@pytest.fixture
def software():
    device = SoftwareRealSense(W, H, FPS, serial="SW123")
    camera = RealSenseCamera(RealSenseConfig(width=W, height=H, fps=FPS, timeout_ms=300), device=device)
    camera.connect()
    yield device, camera
    camera.disconnect()


# --------------------------------------------------------------------------- camera (pyrealsense2)
def test_software_frames_are_pixel_exact_with_timestamps_and_drop_count(software):
    device, camera = software
    rng = np.random.default_rng(0)
    t0 = time.time()
    for number in (1, 2, 5, 6):  # 3 and 4 never arrive: two dropped frames
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        stamp = t0 + number / FPS
        assert device.inject(image, timestamp_s=stamp, frame_number=number) == number
        rgb, t, n = camera.read()
        assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
        assert np.array_equal(rgb, image)
        assert n == number
        assert t == pytest.approx(stamp, abs=1e-6)
    assert camera.frames_read == 4
    assert camera.dropped_frames == 2
    assert camera.timestamp_domain == "system_time" and camera.host_clock_timestamps
    # returned frames are owned copies: the next frame does not overwrite them
    device.inject(np.zeros((H, W, 3), np.uint8))
    first, _, _ = camera.read()
    device.inject(np.full((H, W, 3), 255, np.uint8))
    camera.read()
    assert first.max() == 0
    assert camera.dropped_frames == 2  # automatic numbering continues without gaps


def test_read_times_out_loudly_and_intrinsics_come_from_the_stream(software):
    _, camera = software
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no frame from RealSense SW123 within 300 ms"):
        camera.read()
    assert 0.25 < time.monotonic() - start < 2.0
    intr = camera.intrinsics()
    assert (intr.width, intr.height) == (W, H)
    assert intr.ppx == pytest.approx(W / 2) and intr.fx > 0
    assert camera.device_info == {"serial": "SW123", "name": "Software RealSense", "firmware": "software"}


def test_unsupported_resolution_or_fps_is_refused_with_the_supported_list():
    device = SoftwareRealSense(W, H, FPS)
    with pytest.raises(
        ValueError, match=r"does not support color rgb8 at 640x480@30; supported color rgb8 profiles: 64x48@30"
    ):
        RealSenseCamera(RealSenseConfig(width=640, height=480, fps=30), device=device).connect()
    with pytest.raises(ValueError, match=r"64x48@15.*supported color rgb8 profiles: 64x48@30"):
        RealSenseCamera(RealSenseConfig(width=W, height=H, fps=15), device=device).connect()
    with pytest.raises(RuntimeError, match=r"no RealSense device with serial 'nope'; connected: \['000000000001'\]"):
        RealSenseCamera(RealSenseConfig(serial="nope", width=W, height=H), device=device).connect()
    # nothing was left open: a correct config still connects afterwards
    with RealSenseCamera(RealSenseConfig(width=W, height=H, fps=FPS), device=device) as camera:
        device.inject(np.ones((H, W, 3), np.uint8))
        assert camera.read()[0].max() == 1


def test_no_connected_camera_gives_a_clear_error():
    if list_devices():
        pytest.skip("a RealSense camera is connected to this machine")
    with pytest.raises(RuntimeError, match=r"^no RealSense device found; connected: \[\]$"):
        RealSenseCamera(RealSenseConfig()).connect()


def test_aligned_depth_through_the_software_device():
    device = SoftwareRealSense(W, H, FPS, enable_depth=True)
    config = RealSenseConfig(width=W, height=H, fps=FPS, enable_depth=True, timeout_ms=500)
    with RealSenseCamera(config, device=device) as camera:
        t0 = time.time()
        # the syncer pairs streams only once it has seen both: the first pair is a warm-up
        device.inject(np.zeros((H, W, 3), np.uint8), t0, depth_m=np.ones((H, W)))
        for number in (2, 3):
            image = np.full((H, W, 3), number, np.uint8)
            device.inject(image, t0 + number / FPS, depth_m=np.full((H, W), 0.5 * number))
            rgb, depth, t, n = camera.read_rgbd()
            assert n == number and np.array_equal(rgb, image)
            assert depth.shape == (H, W) and depth.dtype == np.float32
            valid = depth > 0
            assert valid.mean() > 0.9  # rs.align leaves a thin border unfilled
            assert np.allclose(depth[valid], 0.5 * number, atol=1e-3)
        with pytest.raises(ValueError, match="pass depth_m"):
            device.inject(np.zeros((H, W, 3), np.uint8))


def test_bad_inputs_are_refused():
    for bad in ({"width": -1}, {"fps": 0}, {"height": 2.5}, {"width": True}, {"timeout_ms": 0}, {"serial": ""}):
        with pytest.raises(ValueError):
            RealSenseConfig(**bad)
    device = SoftwareRealSense(W, H, FPS)
    with pytest.raises(RuntimeError, match="not streaming"):
        device.inject(np.zeros((H, W, 3), np.uint8))
    with RealSenseCamera(RealSenseConfig(width=W, height=H), device=device):
        with pytest.raises(ValueError, match=r"uint8 of shape \(48, 64, 3\)"):
            device.inject(np.zeros((H, W, 3), np.float32))
        with pytest.raises(ValueError, match=r"uint8 of shape"):
            device.inject(np.zeros((W, H, 3), np.uint8))
        with pytest.raises(ValueError, match="finite"):
            device.inject(np.zeros((H, W, 3), np.uint8), timestamp_s=float("nan"))
        with pytest.raises(ValueError, match="no depth stream"):
            device.inject(np.zeros((H, W, 3), np.uint8), depth_m=np.zeros((H, W)))
    with pytest.raises(RuntimeError, match="not connected"):
        RealSenseCamera(RealSenseConfig(width=W, height=H), device=device).read()
    with pytest.raises(RuntimeError, match="enable_depth=True"):
        RealSenseCamera(RealSenseConfig(width=W, height=H), device=device).read_rgbd()


def test_device_choice_profile_check_and_gap_counting():
    devices = [{"serial": "111", "name": "D435", "firmware": "5"}, {"serial": "222", "name": "D405", "firmware": "5"}]
    with pytest.raises(RuntimeError, match=r"several RealSense devices connected: \['111', '222'\]"):
        choose_device(devices, None)
    assert choose_device(devices, "222") == 1
    assert choose_device(devices[:1], None) == 0
    with pytest.raises(RuntimeError, match=r"no RealSense device with serial '333'; connected: \['111', '222'\]"):
        choose_device(devices, "333")
    check_profile([(640, 480, 30), (1280, 720, 15)], 1280, 720, 15)
    with pytest.raises(ValueError, match=r"supported color rgb8 profiles: 640x480@30, 1280x720@15"):
        check_profile([(1280, 720, 15), (640, 480, 30)], 1280, 720, 30)
    assert [frame_gap(None, 7), frame_gap(7, 8), frame_gap(8, 11), frame_gap(11, 2)] == [0, 0, 2, 0]


# --------------------------------------------------------------------------- camera node (rclpy, two processes)
def _node_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "ros2_ws/src/vla_ros"), str(REPO), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_node(params: dict, domain_id: int, **kwargs) -> subprocess.Popen:
    args = [sys.executable, "-m", "vla_ros.camera_node", "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return subprocess.Popen(
        args, env=_node_env(domain_id), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def test_camera_node_publishes_images_info_and_diagnostics(monkeypatch):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    width, height, fps = 160, 120, 30
    domain_id = random.randint(1, 100)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    proc = _run_node(
        {
            "source": "software",
            "width": width,
            "height": height,
            "fps": fps,
            "camera_name": "cam",
            "diagnostics_period_s": 0.5,
            "rate_log_period_s": 1.0,
        },
        domain_id,
    )
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        node = rclpy.create_node("camera_test_listener", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        images, infos, diags = [], [], []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, "/cam/cam/color/image_raw", lambda m: images.append((time.monotonic(), m)), qos)
        node.create_subscription(CameraInfo, "/cam/cam/color/camera_info", infos.append, qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)

        deadline = time.monotonic() + 30
        while not images and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert images, f"no image within 30 s; node output:\n{_output_so_far(proc)}"
        window_start = time.monotonic()
        first = len(images)
        while time.monotonic() - window_start < 3.0:
            executor.spin_once(timeout_sec=0.05)
        rate = (len(images) - first) / (time.monotonic() - window_start)
        assert rate > 0.5 * fps, f"{rate:.1f} Hz received, configured {fps}"

        msgs = [m for _, m in images]
        assert all((m.width, m.height, m.encoding, m.step) == (width, height, "rgb8", 3 * width) for m in msgs)
        assert all(len(m.data) == width * height * 3 for m in msgs)
        assert all(m.header.frame_id == "cam_color_optical_frame" for m in msgs)
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs]
        assert all(b > a for a, b in zip(stamps, stamps[1:])), "image stamps must increase"
        assert abs(stamps[-1] - time.time()) < 5.0  # stamped from the frame's host time, not zero
        frame = np.frombuffer(bytes(msgs[-1].data), np.uint8).reshape(height, width, 3)
        assert frame.std() > 10  # the synthetic pattern, not a blank image
        assert not np.array_equal(frame, np.frombuffer(bytes(msgs[0].data), np.uint8).reshape(height, width, 3))

        assert infos and (infos[-1].width, infos[-1].height) == (width, height)
        assert infos[-1].k[2] == pytest.approx(width / 2) and infos[-1].k[0] > 0
        image_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs}
        info_stamps = {(i.header.stamp.sec, i.header.stamp.nanosec) for i in infos}
        assert len(image_stamps & info_stamps) >= 0.8 * len(image_stamps)  # each image has its info

        ours = [d.status[0] for d in diags if d.status and d.status[0].name == "camera_node: cam color"]
        assert ours, f"no /diagnostics status from the camera node; got {[s.name for d in diags for s in d.status]}"
        values = {kv.key: kv.value for kv in ours[-1].values}
        assert ours[-1].hardware_id == "Software RealSense 000000000001"
        assert {"rate_hz", "dropped_frames", "frames"} <= set(values)
        assert int(values["frames"]) > 0 and float(values["rate_hz"]) > 0

        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "SYNTHETIC" in out  # the software source announces itself
        assert re.search(r"cam: \d+\.\d Hz \(configured 30\), frames \d+, dropped \d+", out)  # the rate log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rclpy.try_shutdown(context=context)


def _output_so_far(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


@pytest.mark.parametrize(
    "params, code, message",
    [
        ({"source": "software", "width": -1}, 2, "width must be a positive integer, got -1"),
        ({"source": "webcam"}, 2, "unknown source 'webcam'; available: realsense, software"),
        ({"source": "realsense"}, 1, "no RealSense device found; connected: []"),
    ],
)
def test_camera_node_refuses_bad_parameters_and_missing_cameras(params, code, message):
    if params.get("source") == "realsense" and list_devices():
        pytest.skip("a RealSense camera is connected to this machine")
    proc = _run_node(params, random.randint(1, 100))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == code, out
    assert message in out
