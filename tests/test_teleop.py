"""Teleoperation recording: the crash-safe recorder (SIGKILL at every stage, a full disk, undo),
the devices on the byte formats their Linux interfaces deliver, and `vla record` end to end in a
real simulator with a virtual operator."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.teleop import DeviceDisconnectedError, DeviceNotFoundError, TeleopCommand, make_device
from hardware.teleop import base as teleop
from vla.datasets.lerobot_io import episode_labels, features_from_spec, load_dataset
from vla.datasets.recorder import EpisodeRecorder, committed_episodes, recover
from vla.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
STATE_DIM = 6


def small_features(cameras: tuple[str, ...] = ("scene",), state_dim: int = STATE_DIM) -> dict:
    return features_from_spec(state_dim, 3, 0, cameras, (32, 32), use_videos=True)


def frame(value: float, state_dim: int = STATE_DIM, cameras: tuple[str, ...] = ("scene",), noise: bool = False) -> dict:
    """A frame whose state starts with ``value`` (``noise``: the rest incompressible)."""
    state = np.random.default_rng().random(state_dim, np.float32) if noise else np.full(state_dim, value, np.float32)
    state[0] = value
    f = {
        "task": "test",
        "observation.state": state,
        "action": np.full(3, value, np.float32),
        "next.reward": np.zeros(1, np.float32),
        "next.success": np.zeros(1, bool),
        "next.done": np.zeros(1, bool),
    }
    for camera in cameras:
        f[f"observation.images.{camera}"] = np.full((32, 32, 3), int(value * 10) % 255, np.uint8)
    return f


def episode_values(root: Path) -> list[float]:
    """The state value each saved episode was recorded with, in order (from its first frame)."""
    dataset = load_dataset(root)
    starts = [int(i) for i in dataset.meta.episodes["dataset_from_index"]]
    return [float(dataset[i]["observation.state"][0]) for i in starts]


# --------------------------------------------------------------------------- recorder
def test_episodes_commit_undo_and_reload(tmp_path):
    root = tmp_path / "ds"
    with EpisodeRecorder(root, fps=10, features=small_features()) as recorder:
        for value, length in ((1.0, 5), (2.0, 6), (3.0, 7)):
            for _ in range(length):
                recorder.add_frame(frame(value))
            saved = recorder.save_episode({"success": value != 2.0})
            assert saved.frames == length and saved.dropped_frames == 0
        assert recorder.undo_last_episode() == 2
        for _ in range(4):
            recorder.add_frame(frame(4.0))
        recorder.save_episode({"success": True})
        for _ in range(3):  # in progress when closed: dropped
            recorder.add_frame(frame(5.0))
    assert episode_values(root) == [1.0, 2.0, 4.0]
    assert [e["success"] for e in episode_labels(root)] == [True, False, True]
    assert load_dataset(root).meta.total_frames == 5 + 6 + 4
    with EpisodeRecorder(root, fps=10, features=small_features()) as recorder:  # undo down to nothing, then record
        assert [recorder.undo_last_episode() for _ in range(3)] == [2, 1, 0]
        with pytest.raises(ValueError, match="no episode"):
            recorder.undo_last_episode()
        for _ in range(2):
            recorder.add_frame(frame(6.0))
        recorder.save_episode()
    assert episode_values(root) == [6.0]


def test_appending_other_features_is_refused(tmp_path):
    root = tmp_path / "ds"
    with EpisodeRecorder(root, fps=10, features=small_features()) as recorder:
        recorder.add_frame(frame(1.0))
        recorder.save_episode()
    with pytest.raises(ValueError, match="features/fps differ"):
        EpisodeRecorder(root, fps=10, features=small_features(state_dim=STATE_DIM + 1))
    with pytest.raises(ValueError, match="features/fps differ"):
        EpisodeRecorder(root, fps=15, features=small_features())


CHILD = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_teleop import frame, small_features
    from vla.datasets import recorder as rec
    from vla.datasets.recorder import EpisodeRecorder
    stage = {stage!r}
    r = EpisodeRecorder({root!r}, fps=10, features=small_features())
    for value in (1.0, 2.0):
        for _ in range(5):
            r.add_frame(frame(value))
        r.save_episode({{"success": True}})
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if stage == "lerobot_save":      # LeRobot has written rows into an open parquet file and videos
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        LeRobotDataset.finalize = die
    elif stage == "before_commit":   # LeRobot's files are complete, the journal has not committed
        rec._snapshot = die
    elif stage == "undo":            # half-way through removing the last episode
        def half_rollback(root, keep):
            (root / "meta/info.json").write_text("{{")  # as if killed mid-write
            die()
        rec._rollback_to = half_rollback
        r.undo_last_episode()
    for _ in range(7):
        r.add_frame(frame(3.0))
    if stage == "mid_episode":
        die()
    r.save_episode()
    """
)


@pytest.mark.parametrize("stage", ["mid_episode", "lerobot_save", "before_commit", "undo"])
def test_sigkill_keeps_every_saved_episode(tmp_path, stage):
    root = tmp_path / "ds"
    script = CHILD.format(tests=str(REPO / "tests"), stage=stage, root=str(root))
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    if stage == "mid_episode":  # nothing to repair: plain LeRobot loads the saved episodes as they are
        assert episode_values(root) == [1.0, 2.0]
    message = recover(root)
    if stage != "mid_episode":
        assert message and "rolled back an interrupted" in message
    kept = [1.0] if stage == "undo" else [1.0, 2.0]  # a killed undo is finished; a killed save undone
    assert episode_values(root) == kept
    assert committed_episodes(root) == list(range(len(kept)))
    with EpisodeRecorder(root, fps=10, features=small_features()) as recorder:  # and recording goes on
        recorder.add_frame(frame(4.0))
        recorder.save_episode()
    assert episode_values(root) == [*kept, 4.0]


def test_full_disk_during_save_keeps_saved_episodes(tmp_path):
    """A real write failure (the file-size limit makes the kernel refuse writes with EFBIG, as a
    full disk refuses them with ENOSPC): the failed episode is rolled back at once, the earlier
    ones stay and recording continues."""
    root = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, numpy as np
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_teleop import frame
        from vla.datasets.lerobot_io import features_from_spec
        from vla.datasets.recorder import EpisodeRecorder
        features = features_from_spec(500, 3, 0, (), use_videos=False)
        r = EpisodeRecorder({str(root)!r}, fps=10, features=features)
        for value in (1.0, 2.0):
            for _ in range(3):
                r.add_frame(frame(value, 500, (), noise=True))
            r.save_episode()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (250_000, resource.RLIM_INFINITY))
        for _ in range(200):  # ~400 kB of incompressible state: more than one file may hold
            r.add_frame(frame(3.0, 500, (), noise=True))
        try:
            r.save_episode()
        except RuntimeError as e:
            print("REFUSED", e)
        for _ in range(3):
            r.add_frame(frame(4.0, 500, (), noise=True))
        r.save_episode()
        r.close()
        """
    )
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "REFUSED saving episode 2 failed" in child.stdout and "keeps its 2 saved episodes" in child.stdout
    assert episode_values(root) == [1.0, 2.0, 4.0]


# --------------------------------------------------------------------------- devices
def js_event(value: int, kind: int, number: int, time_ms: int = 0) -> bytes:
    return struct.pack("<IhBB", time_ms, value, kind, number)


def test_gamepad_reads_joystick_events_and_detects_unplug():
    from hardware.teleop.gamepad import JS_EVENT_AXIS, JS_EVENT_BUTTON, JS_EVENT_INIT, GamepadDevice

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    pad = GamepadDevice(path=f"/proc/self/fd/{read_end}")
    pad.connect()
    # the driver's initial state (start button reported as held at connect: not an event)
    os.write(write_end, js_event(0, JS_EVENT_AXIS | JS_EVENT_INIT, 1) + js_event(1, JS_EVENT_BUTTON | JS_EVENT_INIT, 7))
    assert pad.read().events == ()
    os.write(
        write_end,
        js_event(-32767, JS_EVENT_AXIS, 1) + js_event(1, JS_EVENT_BUTTON, 0) + js_event(0, JS_EVENT_BUTTON, 7),
    )
    command = pad.read()
    assert command.twist[0] == pytest.approx(1.0) and command.gripper_closed and command.engaged
    os.write(write_end, js_event(0, JS_EVENT_BUTTON, 0)[:5])  # half an event: kept for the next read
    os.write(write_end, js_event(0, JS_EVENT_BUTTON, 0)[5:] + js_event(1, JS_EVENT_BUTTON, 7))
    assert pad.read().events == (teleop.NEXT,)
    os.write(write_end, js_event(1000, JS_EVENT_AXIS, 0))  # inside the dead zone
    assert pad.read().twist[1] == 0.0
    os.close(write_end)
    with pytest.raises(DeviceDisconnectedError):
        pad.read()
    pad.disconnect()


def test_missing_devices_say_what_was_found(tmp_path):
    from hardware.teleop.spacemouse import SpaceMouseDevice

    with pytest.raises(DeviceNotFoundError, match="Joystick devices found"):
        make_device("gamepad", path=str(tmp_path / "js9")).connect()
    sysfs = tmp_path / "hidraw"
    (sysfs / "hidraw0" / "device").mkdir(parents=True)
    (sysfs / "hidraw0" / "device" / "uevent").write_text("HID_ID=0003:000046D:0000C52B\nHID_NAME=Logitech Receiver\n")
    with pytest.raises(DeviceNotFoundError, match=r"/dev/hidraw0 \(Logitech Receiver, 046d:c52b\)"):
        SpaceMouseDevice(sysfs=str(sysfs)).connect()
    with pytest.raises(UnknownNameError, match="gamepad, keyboard, scripted, spacemouse"):
        make_device("joystick")


def test_spacemouse_reads_hid_reports():
    from hardware.teleop.spacemouse import SpaceMouseDevice

    ours, device_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # one report per read, as hidraw
    mouse = SpaceMouseDevice(path="unused")
    mouse._fd = ours.fileno()
    ours.setblocking(False)
    device_side.send(bytes([1]) + struct.pack("<hhh", 0, -350, 0))  # cap pushed away from the operator
    device_side.send(bytes([2]) + struct.pack("<hhh", 0, 0, 175))  # twisted
    device_side.send(bytes([3, 1]))  # left button down
    command = mouse.read()
    assert command.twist[0] == pytest.approx(1.0) and command.twist[5] == pytest.approx(-0.5)
    assert command.gripper_closed
    device_side.send(bytes([3, 0]))
    device_side.send(bytes([3, 2]))  # right button: start/save
    assert mouse.read().events == (teleop.NEXT,) and mouse.read().gripper_closed
    device_side.close()
    with pytest.raises(DeviceDisconnectedError):
        mouse.read()


def test_keyboard_in_a_terminal():
    from hardware.teleop.keyboard import KeyboardDevice

    master, slave = pty.openpty()
    with open(slave, closefd=True) as terminal:
        keyboard = KeyboardDevice(stream=terminal, hold_seconds=30.0)
        keyboard.connect()  # cbreak mode: keys arrive without Enter
        os.write(master, b"wr \r")
        time.sleep(0.1)
        command = keyboard.read()
        assert command.twist[0] == 1.0 and command.twist[2] == 1.0 and command.gripper_closed
        assert command.events == (teleop.NEXT,)
        os.write(master, b"zq\x7f")
        time.sleep(0.1)
        assert keyboard.read().events == (teleop.UNDO, teleop.QUIT, teleop.DISCARD)
        keyboard.disconnect()
    os.close(master)


def test_commands_refuse_bad_input():
    with pytest.raises(ValueError, match="finite"):
        TeleopCommand(twist=[np.nan, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="6 components"):
        TeleopCommand(twist=[0, 0, 0])
    with pytest.raises(ValueError, match="unknown teleop events"):
        TeleopCommand(events=("explode",))
    assert TeleopCommand(twist=[5, -5, 0, 0, 0, 0]).twist.tolist()[:2] == [1.0, -1.0]


# --------------------------------------------------------------------------- vla record
def run_record(tmp_path, script: list[dict], *extra: str) -> tuple[Path, dict]:
    script_path = tmp_path / "script.json"
    script_path.write_text(json.dumps(script))
    out = tmp_path / "ds"
    argv = ["record", "--env", "robomimic/Lift", "--device", "scripted", "--device-script", str(script_path)]
    argv += ["--out", str(out), "--view", "none", "--image-size", "32", "--episodes", "10", *extra]
    child = subprocess.run(
        [sys.executable, "-m", "vla.cli.main", *argv], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return out, json.loads((out / "meta" / "vla_last_session.json").read_text())


def test_record_session_with_a_virtual_operator(tmp_path):
    script = [
        {"events": ["start"]},
        {"expert": True, "ticks": 150},  # succeeds (~55 ticks): saved as a success
        {"events": ["start"], "twist": [0, 0, 1, 0, 0, 0], "ticks": 5},
        {"events": ["discard"]},
        {"events": ["start"], "twist": [1, 0, 0, 0, 0, 0], "ticks": 6, "gripper": True},
        {"events": ["save"]},  # saved as a failure
        {"events": ["start"]},
        {"expert": True, "ticks": 150},
        {"events": ["undo"]},  # removes that last success
        {"events": ["start"], "twist": [0, 1, 0, 0, 0, 0], "ticks": 3},
        {"unplug": True},  # mid-episode: that episode is lost, nothing else
    ]
    out, session = run_record(tmp_path, script)
    assert session["saved"] == 3 and session["undone"] == 1 and session["discarded"] == 2
    assert session["stopped_by"].startswith("device disconnected")
    assert max(session["save_seconds"]) < 5
    labels = episode_labels(out)
    assert [e["success"] for e in labels] == [True, False]
    dataset = load_dataset(out)
    assert dataset.num_episodes == 2
    assert bool(dataset[int(dataset.meta.episodes["dataset_to_index"][0]) - 1]["next.success"])
    second = range(
        int(dataset.meta.episodes["dataset_from_index"][1]), int(dataset.meta.episodes["dataset_to_index"][1])
    )
    assert len(second) == 6
    actions = np.stack([dataset[i]["action"].numpy() for i in second])
    assert np.allclose(actions[:, 0], 0.4) and np.allclose(actions[:, 6], 1.0)  # full x deflection, gripper closed
    assert all(bool(dataset[i]["intervention"]) for i in second)  # a person drove every frame
    times = [float(dataset[i]["capture_time_s"]) for i in second]
    assert times == sorted(times) and times[-1] < 5.0
    assert dataset[0]["observation.images.scene"].shape == (3, 32, 32)


def test_record_with_a_policy_marks_interventions(tmp_path):
    import torch

    from sim import make_env
    from vla import keys
    from vla.policies.checkpoint import save_policy
    from vla.policies.config import PolicyConfig
    from vla.policies.flow_policy import FlowPolicy
    from vla.policies.normalize import compute_stats

    env = make_env("robomimic/Lift", obs_mode="state", vectorization="sync")
    spec = env.spec
    env.close()
    shapes = {keys.OBS_STATE: [spec.state_dim], keys.OBS_ENV_STATE: [spec.env_state_dim]}
    config = PolicyConfig(
        vector_features=tuple(shapes),
        feature_shapes=shapes,
        action_dim=spec.action_dim,
        chunk_size=4,
        n_action_steps=2,
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
    )
    torch.manual_seed(0)
    policy = FlowPolicy(config)
    stats = {k: compute_stats(torch.randn(20, v[0])) for k, v in shapes.items()}
    stats[keys.ACTION] = compute_stats(torch.rand(20, spec.action_dim) * 0.2 - 0.1)
    policy.set_normalization(stats)
    save_policy(policy, stats, tmp_path / "policy")
    script = [
        {"events": ["start"], "ticks": 4},  # the policy acts
        {"twist": [0, 0, 1, 0, 0, 0], "ticks": 3},  # moving the device takes over
        {"events": ["release"], "ticks": 4},  # the policy again
        {"events": ["save"]},
    ]
    out, session = run_record(tmp_path, script, "--policy", str(tmp_path / "policy"), "--keep-failures")
    assert session["saved"] == 1
    dataset = load_dataset(out)
    flags = [bool(dataset[i]["intervention"]) for i in range(len(dataset))]
    assert flags == [False] * 4 + [True] * 3 + [False] * 4
    assert episode_labels(out)[0]["takeovers"] == 1 and episode_labels(out)[0]["human_frames"] == 3


def test_record_without_the_device_lists_what_exists(tmp_path):
    child = subprocess.run(
        [sys.executable, "-m", "vla.cli.main", "record", "--device", "gamepad", "--device-path", str(tmp_path / "js7")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 2
    assert "Joystick devices found" in child.stderr


# --------------------------------------------------------------------------- rosbag2 -> LeRobot
def write_bag(
    path: Path, seconds: float = 1.0, camera_hz: float = 30.0, drop: tuple[int, ...] = (), skew_s: float = 0.02
):
    """A bag as `vla_ros.recorder` writes it: two cameras, joint states at 100 Hz and trajectory
    commands at 10 Hz; camera frames listed in ``drop`` never arrive, messages are received
    ``skew_s`` after their header stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    t0 = 1_700_000_000.0
    joints = [f"fr3_joint{k}" for k in range(1, 8)]

    def header(t: float):
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=int(t), nanosec=int(t % 1 * 1e9)), frame_id=""
        )

    messages = []  # (receive time, topic, msg)
    for i in range(int(seconds * camera_hz)):
        t = t0 + i / camera_hz
        if i in drop:
            continue
        for topic, value in (
            ("/camera/camera/color/image_raw", i),
            ("/wrist_camera/wrist_camera/color/image_raw", 255 - i),
        ):
            pixels = np.full((24, 32, 3), value % 256, np.uint8)
            pixels[0, 0] = (i % 256, 0, 0)
            msg = T["sensor_msgs/msg/Image"](
                header=header(t), height=24, width=32, encoding="rgb8", is_bigendian=0, step=96, data=pixels.reshape(-1)
            )
            messages.append((t + skew_s, topic, msg))
    for i in range(int(seconds * 100) + 5):
        t = t0 + i / 100
        position = np.array([t - t0] * 7 + [0.04, 0.04])
        msg = T["sensor_msgs/msg/JointState"](
            header=header(t),
            name=[*joints, "fr3_finger_joint1", "fr3_finger_joint2"],
            position=position,
            velocity=np.zeros(0),
            effort=np.zeros(0),
        )
        messages.append((t + skew_s, "/joint_states", msg))
    duration = T["builtin_interfaces/msg/Duration"]
    for i in range(int(seconds * 10)):
        t = t0 + i / 10
        points = [
            T["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=np.full(7, i + 0.5 * k),
                velocities=np.zeros(0),
                accelerations=np.zeros(0),
                effort=np.zeros(0),
                time_from_start=duration(sec=0, nanosec=int(k * 50e6)),
            )
            for k in range(3)
        ]
        msg = T["trajectory_msgs/msg/JointTrajectory"](header=header(t), joint_names=joints, points=points)
        messages.append((t + skew_s, "/fr3_arm_controller/joint_trajectory", msg))
    messages.append((t0, "/task_instruction", T["std_msgs/msg/String"](data="lift the cube")))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for received, topic, msg in sorted(messages, key=lambda m: m[0]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
            writer.write(connections[topic], int(received * 1e9), ts.serialize_cdr(msg, msg.__msgtype__))


def test_bags_become_episodes_with_a_drop_report(tmp_path):
    from vla.teleop.from_bag import FromBagConfig, bags_to_dataset

    write_bag(tmp_path / "clean")
    write_bag(tmp_path / "lossy", drop=(10, 11, 12, 20))
    out = tmp_path / "ds"
    reports = bags_to_dataset(FromBagConfig(bags=(tmp_path / "clean", tmp_path / "lossy"), out=out, fps=30.0))
    clean, lossy = (r["streams"]["camera:scene"] for r in reports)
    assert clean["dropped_ticks"] == 0 and clean["duplicated_ticks"] == 0
    # frames 10-12 missing: the held frame 9 is used 3 more times (duplicates), 2 of them too old (drops)
    assert lossy["duplicated_ticks"] == 4 and lossy["dropped_ticks"] == 2
    assert reports[0]["stamp_minus_receive_ms"]["median"] == pytest.approx(-20.0, abs=0.5)
    assert reports[0]["action_source"] == "commanded"
    dataset = load_dataset(out)
    assert dataset.num_episodes == 2 and dataset.meta.total_frames == reports[0]["ticks"] + reports[1]["ticks"]
    first = dataset[5]
    assert dataset.meta.features["observation.state"]["names"][:7] == [f"fr3_joint{k}" for k in range(1, 8)]
    assert first["task"] == "lift the cube"
    assert float(first["observation.state"][0]) == pytest.approx(5 / 30, abs=0.011)  # joint states at the tick
    assert float(first["action"][0]) == pytest.approx(
        2.0, abs=1e-6
    )  # trajectory 1 (sent at 0.1 s), its point due at 0.2 s
    scene = first["observation.images.scene"]  # the frame of tick 5, decoded from the video
    assert abs(float(scene[1, 5, 5]) * 255 - 5) < 3
    with pytest.raises(ValueError, match="has no"):
        bags_to_dataset(FromBagConfig(bags=(tmp_path / "clean",), out=tmp_path / "x", cameras=("scene=/nope",)))


def test_scripted_demonstrations_replay_to_success(lift_dataset, tmp_path):
    from sim.replay import ReplayConfig, replay

    summary = replay(ReplayConfig(dataset=lift_dataset, video=tmp_path / "replay.mp4", image_size=64))
    assert summary["episodes"] == 2 and summary["replay_success_rate"] == 1.0
    assert Path(summary["video"]).stat().st_size > 0


def test_dataset_view_writes_a_video(tmp_path):
    from vla.datasets.viewer import episode_video

    out = tmp_path / "ds"
    with EpisodeRecorder(out, fps=10, features=small_features()) as recorder:
        for i in range(8):
            recorder.add_frame(frame(float(i)))
        recorder.save_episode()
    import imageio.v2 as imageio

    video = episode_video(out, 0, tmp_path / "ep0.mp4")
    assert imageio.get_reader(video).count_frames() == 8
