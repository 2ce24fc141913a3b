"""The rosbag2 recorder node, the graph launcher and the robot-PC launch file, run for real:
nodes in their own processes, real rclpy publishers/subscribers on a private ROS domain, bags
read back with rosbags."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "vla_ros"
TALKER = ROOT / "tests" / "ros_nodes" / "talker.py"
LAUNCH_FILE = ROOT / "launch" / "franka_policy.launch.py"

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-jazzy-rclpy) is part of the project environment")
sys.path.insert(0, str(PKG))
from vla_ros import launcher as L  # noqa: E402
from vla_ros import recorder as R  # noqa: E402


def _share_prefix(package: str) -> Path:
    """The install prefix whose share/ holds ``package`` (the venv for the PyPI ROS wheels)."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [Path(sys.prefix)]
    for prefix in prefixes:
        if (prefix / "share" / package).is_dir():
            return prefix
    raise AssertionError(f"no share/{package} under {prefixes}: is AMENT_PREFIX_PATH set (scripts/setup_env.sh)?")


def _domain(k: int) -> int:
    """A ROS domain per test and per pytest process, so parallel runs do not see each other."""
    return 100 + (os.getpid() % 30) * 4 + k


def _env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _RosEnv:
    """rclpy in the test process on a given domain, in its own context."""

    def __init__(self, domain: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(f"test_{os.getpid()}", context=self.context)
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return condition()

    def close(self) -> None:
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def ros(request):
    envs = []

    def make(domain: int) -> _RosEnv:
        envs.append(_RosEnv(domain))
        return envs[-1]

    yield make
    for e in envs:
        e.close()


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 15.0) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# --------------------------------------------------------------------------- recorder
def test_recorder_records_images_and_joint_states_pixel_exact(tmp_path, ros):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import Image, JointState

    domain = _domain(0)
    bag = tmp_path / "bag"
    params = tmp_path / "recorder.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "/**": {
                    "ros__parameters": {
                        "output_dir": str(bag),
                        "topics": ["/camera/camera/color/image_raw", "/joint_states"],
                        "stats_period_s": 1.0,
                    }
                }
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_ros.recorder", "--ros-args", "--params-file", str(params)],
        env=_env(domain),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        env = ros(domain)
        img_pub = env.node.create_publisher(Image, "/camera/camera/color/image_raw", 10)
        js_pub = env.node.create_publisher(JointState, "/joint_states", 10)
        assert env.spin_until(
            lambda: img_pub.get_subscription_count() > 0 and js_pub.get_subscription_count() > 0, 30.0
        ), "the recorder never subscribed"
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(12)]
        for i, pixels in enumerate(images):
            msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=pixels.tobytes())
            msg.header.frame_id = f"frame{i}"
            img_pub.publish(msg)
            for j in range(4):
                js_pub.publish(
                    JointState(name=[f"fr3_joint{k}" for k in range(1, 8)], position=[0.1 * i + 0.01 * j] * 7)
                )
                env.spin_until(lambda: False, 0.005)
        rclpy_hash = str(env.node.get_publishers_info_by_topic("/camera/camera/color/image_raw")[0].topic_type_hash)
        env.spin_until(lambda: False, 0.5)
    finally:
        rc, out = _stop(proc)
    assert rc == 0, out
    assert "/camera/camera/color/image_raw: 12 msgs" in out, out  # per-topic counts with units
    assert "msg/s" in out and "MB" in out

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap"
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    image_meta = topics["/camera/camera/color/image_raw"]
    assert image_meta["message_count"] == 12 and topics["/joint_states"]["message_count"] == 48
    assert image_meta["topic_metadata"]["type"] == "sensor_msgs/msg/Image"
    assert rclpy_hash.startswith("RIHS01_")
    assert image_meta["topic_metadata"]["type_description_hash"] == rclpy_hash
    shipped = json.loads((_share_prefix("sensor_msgs") / "share/sensor_msgs/msg/Image.json").read_text())
    assert rclpy_hash in [h["hash_string"] for h in shipped["type_hashes"]]  # and the installed package's
    assert image_meta["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "reliable"

    typestore = get_typestore(Stores.ROS2_JAZZY)
    got_images, got_positions = {}, []
    with Reader(bag) as reader:
        assert {c.topic for c in reader.connections} == {"/camera/camera/color/image_raw", "/joint_states"}
        for conn, _stamp, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/joint_states":
                got_positions.append(msg.position[0])
            else:
                got_images[msg.header.frame_id] = np.asarray(msg.data).reshape(msg.height, msg.width, 3)
    assert sorted(got_images) == sorted(f"frame{i}" for i in range(12))
    for i, pixels in enumerate(images):
        np.testing.assert_array_equal(got_images[f"frame{i}"], pixels)
    np.testing.assert_allclose(got_positions, [0.1 * i + 0.01 * j for i in range(12) for j in range(4)])


def test_recorder_sigterm_closes_the_bag_and_refuses_to_overwrite_it(tmp_path):
    bag = tmp_path / "bag"
    cmd = [
        sys.executable,
        "-m",
        "vla_ros.recorder",
        "--ros-args",
        "-p",
        f"output_dir:={bag}",
        "-p",
        "topics:=[/nobody_publishes_this]",
    ]
    proc = subprocess.Popen(cmd, env=_env(_domain(1)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2.0)
    rc, out = _stop(proc, signal.SIGTERM)
    assert rc == 0, out
    assert "never saw a publisher on: /nobody_publishes_this" in out
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["message_count"] == 0 and meta["storage_identifier"] == "mcap"

    again = subprocess.run(cmd, env=_env(_domain(1)), capture_output=True, text=True, timeout=30)
    assert again.returncode == 2
    assert "exists already" in again.stdout + again.stderr
    typo = subprocess.run(
        cmd[:-4] + ["-p", f"output_dirr:={tmp_path / 'other'}"],
        env=_env(_domain(1)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert typo.returncode == 2
    assert (
        "unknown parameter(s) ['output_dirr'] for recorder; available: output_dir, topics" in typo.stdout + typo.stderr
    )
    bogus = subprocess.run(
        cmd[:-4] + ["-p", f"output_dir:={tmp_path / 'other'}", "-p", "executor:=fast"],
        env=_env(_domain(1)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bogus.returncode == 2
    assert "unknown executor 'fast'; available: events, multi_threaded" in bogus.stdout + bogus.stderr


def test_recorder_runs_on_the_multi_threaded_executor_too(tmp_path):
    bag = tmp_path / "bag"
    cmd = [
        sys.executable,
        "-m",
        "vla_ros.recorder",
        "--ros-args",
        "-p",
        f"output_dir:={bag}",
        "-p",
        "topics:=[/nobody_publishes_this]",
        "-p",
        "executor:=multi_threaded",
    ]
    proc = subprocess.Popen(cmd, env=_env(_domain(1)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2.0)
    rc, out = _stop(proc, signal.SIGTERM)
    assert rc == 0, out
    assert yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["message_count"] == 0


def test_recorder_config_validation(tmp_path):
    with pytest.raises(ValueError, match="storage 'sqlite3' is not supported; supported: mcap"):
        R.RecorderConfig(output_dir=str(tmp_path / "x"), storage="sqlite3")
    with pytest.raises(ValueError, match="max_queue"):
        R.RecorderConfig(output_dir=str(tmp_path / "x"), max_queue=0)
    with pytest.raises(ValueError, match="absolute names"):
        R.RecorderConfig(output_dir=str(tmp_path / "x"), topics=("joint_states",))
    with pytest.raises(ValueError, match="exists already"):
        R.RecorderConfig(output_dir=str(tmp_path))
    assert R.RecorderConfig(output_dir=str(tmp_path / "x"), topics=()).topics == R.DEFAULT_TOPICS


def test_bag_writer_drops_and_counts_when_the_queue_is_full(tmp_path):
    from rosbags.rosbag2 import Reader

    writer = R.BagWriter(tmp_path / "bag", max_queue=3)  # writer thread not started: the queue fills up
    writer.add_topic("/chatter", R.type_definition("std_msgs/msg/String"))
    accepted = [writer.submit("/chatter", 1000 + i, bytes([0, 1, 0, 0, 2, 0, 0, 0, 65 + i, 0])) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    stats = writer.close()
    assert stats["/chatter"].messages == 3 and stats["/chatter"].dropped == 2
    assert "2 dropped (queue full)" in stats["/chatter"].describe()
    with Reader(tmp_path / "bag") as reader:
        assert [t for _, t, _ in reader.messages()] == [1000, 1001, 1002]


def test_type_definition_from_installed_msg_files_matches_rclpy_hashes(tmp_path):
    prefix = _share_prefix("sensor_msgs")
    shipped = prefix / "share/sensor_msgs/msg/JointState.json"
    assert shipped.is_file(), f"expected the sensor_msgs type description at {shipped}"
    expected = {h["type_name"]: h["hash_string"] for h in json.loads(shipped.read_text())["type_hashes"]}
    # Only from .msg files (as for interface packages built in this workspace), no bundled store:
    found = R.type_definition("sensor_msgs/msg/JointState", prefixes=[prefix], bundled=False)
    assert found.rihs01 == expected["sensor_msgs/msg/JointState"]
    assert "MSG: std_msgs/Header" in found.msgdef
    # A package only known from its .msg file, nesting a bundled type:
    (tmp_path / "share/demo_msgs/msg").mkdir(parents=True)
    (tmp_path / "share/demo_msgs/msg/Reading.msg").write_text("std_msgs/Header header\nfloat64[] values\n")
    demo = R.type_definition("demo_msgs/msg/Reading", prefixes=[tmp_path])
    assert demo.rihs01.startswith("RIHS01_") and "float64[] values" in demo.msgdef
    with pytest.raises(ValueError, match="no definition for message type 'demo_msgs/msg/Missing'"):
        R.type_definition("demo_msgs/msg/Missing", prefixes=[tmp_path])


# --------------------------------------------------------------------------- launcher
def _graph_yaml(tmp_path: Path, nodes: list[dict], name: str = "graph.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"nodes": nodes}, sort_keys=False))
    return path


def test_graph_validation_errors_are_clear(tmp_path):
    talker = {"name": "talker", "executable": str(TALKER)}
    with pytest.raises(L.GraphError, match=r"node 'talker': unknown key\(s\) 'paramz'; allowed: name, module"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [{**talker, "paramz": {}}]))
    with pytest.raises(L.GraphError, match=r"params_file 'missing.yaml' not found \(resolved to .*missing.yaml\)"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [{**talker, "params_file": "missing.yaml"}]))
    with pytest.raises(L.GraphError, match="unknown key"):
        (tmp_path / "top.yaml").write_text("nodez: []\n")
        L.Graph.from_yaml(tmp_path / "top.yaml")
    with pytest.raises(L.GraphError, match="Python module 'vla_ros.no_such_node' not found"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [{"name": "x", "module": "vla_ros.no_such_node"}]))
    with pytest.raises(L.GraphError, match="exactly one of 'module'"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [{"name": "x"}]))
    with pytest.raises(L.GraphError, match="duplicate node name"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [talker, talker]))
    graph = L.Graph.from_yaml(_graph_yaml(tmp_path, [talker]))
    with pytest.raises(L.GraphError, match="unknown node 'policy'; nodes: talker"):
        graph.with_overrides(["policy.device=cuda"])
    with pytest.raises(L.GraphError, match="expected NODE.PARAM=VALUE"):
        graph.with_overrides(["device=cuda"])
    with pytest.raises(L.GraphError, match="one type"):
        graph.with_overrides(["talker.q=[0.0, 1]"])
    with pytest.raises(L.GraphError, match="not a ROS parameter value"):
        graph.with_overrides({"talker.x": None})
    with pytest.raises(L.GraphError, match="0..232"):
        L.Graph.from_yaml(_graph_yaml(tmp_path, [talker]), domain_id=999)


def test_parameters_merge_file_inline_and_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent("""\
        /**:
          ros__parameters: {rate_hz: 5.0, prefix: file, camera: {width: 64, height: 48}}
        talker:
          ros__parameters: {prefix: section}
        other_node:
          ros__parameters: {prefix: not-mine}
        """)
    )
    path = _graph_yaml(
        tmp_path,
        [
            {
                "name": "talker",
                "executable": str(TALKER),
                "params_file": "p.yaml",
                "parameters": {"rate_hz": 50.0, "camera": {"width": 128}},
            }
        ],
    )
    graph = L.Graph.from_yaml(path, ["talker.camera.height=96", "talker.tags=[a, b]"])
    assert graph.node("talker").merged_parameters() == {
        "rate_hz": 50.0,
        "prefix": "section",
        "camera.width": 128,
        "camera.height": 96,
        "tags": ["a", "b"],
    }
    cmd = graph.node("talker").command(tmp_path / "merged.yaml")
    assert cmd[:2] == [sys.executable, str(TALKER)]
    assert cmd[2:] == ["--ros-args", "-r", "__node:=talker", "--params-file", str(tmp_path / "merged.yaml")]
    (tmp_path / "q.yaml").write_text("someone_else:\n  ros__parameters: {a: 1}\n")
    with pytest.raises(L.GraphError, match="has no section for node 'talker'"):
        L.Graph.from_yaml(
            _graph_yaml(tmp_path, [{"name": "talker", "executable": str(TALKER), "params_file": "q.yaml"}])
        )


def test_launch_brings_up_graph_waits_ready_and_stops(tmp_path, ros):
    from std_msgs.msg import String

    domain = _domain(2)
    bag = tmp_path / "bag"
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": {"topics": ["/greetings"]}}}))
    path = _graph_yaml(
        tmp_path,
        [
            {
                "name": "talker",
                "executable": str(TALKER),
                "parameters": {"rate_hz": 20.0, "prefix": "from-yaml"},
                "remappings": {"chatter": "/greetings"},
                "required": True,
            },
            {
                "name": "recorder",
                "module": "vla_ros.recorder",
                "params_file": "rec.yaml",
                "parameters": {"output_dir": str(bag)},
            },
            {"name": "off", "executable": str(TALKER), "enabled": False},
        ],
    )
    graph = L.Graph.from_yaml(path, ["talker.prefix=from-override"], domain_id=domain)
    lines: list[str] = []
    with L.launch(graph, output=lines.append) as running:
        assert set(running.returncodes) == {"talker", "recorder"}  # 'off' is disabled
        running.wait_ready(["/greetings"], timeout=30)
        env = ros(domain)
        got: list[str] = []
        env.node.create_subscription(String, "/greetings", lambda m: got.append(m.data), 10)
        assert env.spin_until(lambda: len(got) >= 3, 20.0), lines
        assert running.returncodes == {"talker": None, "recorder": None}
        with pytest.raises(TimeoutError, match="no publisher on /never"):
            running.wait_ready(["/never"], timeout=0.5)
        time.sleep(1.0)  # the recorder discovers /greetings within its discovery period
        codes = running.stop()
    assert got[0].startswith("from-override "), got  # --set override reached the node through the params file
    assert codes["recorder"] == 0 and codes["talker"] is not None, lines
    assert any(line.startswith("[talker] ") and "publishing on /greetings" in line for line in lines), lines
    assert any(line.startswith("[recorder] ") for line in lines)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["topics_with_message_count"][0]["message_count"] > 0  # SIGINT let the recorder close its bag
    for pid in running.pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_respawn_and_shutdown_escalation(tmp_path):
    path = _graph_yaml(
        tmp_path,
        [
            {
                "name": "flaky",
                "executable": str(TALKER),
                "respawn": True,
                "respawn_delay": 0.2,
                "parameters": {"exit_after_s": 0.3, "exit_code": 5},
            },
            # ignores SIGINT: the launcher must escalate to SIGTERM
            {
                "name": "stubborn",
                "executable": "sh",
                "args": ["-c", "trap '' INT; echo trapped; while true; do sleep 0.1; done"],
            },
        ],
    )
    lines: list[str] = []
    running = L.launch(
        L.Graph.from_yaml(path, domain_id=_domain(4)), output=lines.append, sigint_timeout=0.5, sigterm_timeout=2.0
    )
    try:
        deadline = time.monotonic() + 30
        while running.restarts["flaky"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.restarts["flaky"] >= 2, lines
        while "[stubborn] trapped" not in lines and time.monotonic() < deadline:  # a loaded machine starts sh late
            time.sleep(0.05)
        assert "[stubborn] trapped" in lines and running.returncodes["stubborn"] is None, lines
    finally:
        codes = running.stop()
    assert codes["stubborn"] == -signal.SIGTERM, lines
    assert "[launcher] sending SIGTERM to stubborn" in lines
    assert any("flaky exited with code 5" in line for line in lines)


def test_a_python_node_that_will_not_stop_dumps_its_stacks_before_sigkill(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TALKER.parent))  # so the launcher finds the `hang` module
    path = tmp_path / "graph.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "env": {"PYTHONPATH": os.pathsep.join([str(TALKER.parent), os.environ.get("PYTHONPATH", "")])},
                "nodes": [{"name": "hung", "module": "hang"}],
            }
        )
    )
    lines: list[str] = []
    running = L.launch(
        L.Graph.from_yaml(path, domain_id=_domain(4)), output=lines.append, sigint_timeout=0.3, sigterm_timeout=0.3
    )
    try:
        deadline = time.monotonic() + 30
        while "[hung] hanging" not in lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "[hung] hanging" in lines, lines
    finally:
        codes = running.stop()
    assert codes["hung"] == -signal.SIGKILL, lines
    assert "[launcher] sending SIGUSR1 to hung (stack dump before SIGKILL)" in lines, lines
    assert any(line.startswith("[hung] ") and "stuck_in_shutdown" in line for line in lines), lines


def test_cli_required_node_failure_stops_the_rest_and_exits_nonzero(tmp_path):
    path = _graph_yaml(
        tmp_path,
        [
            {"name": "steady", "executable": str(TALKER), "parameters": {"topic": "steady"}},
            {
                "name": "crasher",
                "executable": str(TALKER),
                "required": True,
                "parameters": {"topic": "crash", "exit_after_s": 2.0, "exit_code": 3},
            },
        ],
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "vla_ros.launcher", str(path), "--domain-id", str(_domain(3))],
        env=_env(_domain(3)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "required node 'crasher' exited with code 3" in result.stdout + result.stderr
    assert "[crasher] " in result.stdout and "exiting on purpose with code 3" in result.stdout
    assert "sending SIGINT to steady" in result.stdout
    assert "steady exited with code 0" in result.stdout  # stopped cleanly, not killed
    assert time.monotonic() - start < 30


def test_cli_reports_graph_errors(tmp_path):
    path = _graph_yaml(tmp_path, [{"name": "talker", "executable": str(TALKER), "params_file": "nope.yaml"}])
    result = subprocess.run(
        [sys.executable, "-m", "vla_ros.launcher", str(path)],
        env=_env(_domain(3)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "params_file 'nope.yaml' not found" in result.stderr


def test_sim_lift_graph_validates():
    graph = L.Graph.from_yaml(ROOT / "launch/graphs/sim_lift.yaml", enable=["recorder"])
    assert [n.name for n in graph.active_nodes()] == ["sim_franka", "vla_policy", "recorder"]
    assert not L.Graph.from_yaml(ROOT / "launch/graphs/sim_lift.yaml").node("recorder").enabled
    assert graph.node("sim_franka").merged_parameters()["task"] == "robomimic/Lift"
    assert graph.node("recorder").merged_parameters()["storage"] == "mcap"


# --------------------------------------------------------------------------- launch file
def test_franka_launch_file_parses_and_includes_the_real_launch_files():
    tree = ast.parse(LAUNCH_FILE.read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    # Included packages and launch files (franka_ros2 Jazzy, realsense-ros), and our executables.
    assert {"franka_bringup", "franka.launch.py", "realsense2_camera", "rs_launch.py"} <= strings
    assert {"vla_ros", "policy_node", "recorder", "controller_manager", "spawner"} <= strings
    # franka.launch.py's and rs_launch.py's own argument names.
    assert {"robot_type", "robot_ip", "load_gripper", "use_fake_hardware", "controllers_yaml"} <= strings
    assert {"serial_no", "camera_name", "camera_namespace", "rgb_camera.color_profile"} <= strings
    assert {"policy_fr3.yaml", "recorder.yaml"} <= strings
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    arguments = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS")
    declared = {k.value for k in arguments.value.keys}
    assert {
        "robot_ip",
        "arm_id",
        "policy_checkpoint",
        "server_host",
        "server_port",
        "params_file",
        "record",
    } <= declared

    # Its pure functions (the controllers file it writes, the policy source), run without launch:
    pure = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("controllers_config", "_policy_source")
    ]
    scope: dict = {}
    exec(compile(ast.Module(body=pure, type_ignores=[]), str(LAUNCH_FILE), "exec"), scope)
    assert scope["_policy_source"]("", "gpu-box", "8001") == {
        "checkpoint": "",
        "server_host": "gpu-box",
        "server_port": 8001,
    }
    assert scope["_policy_source"]("/ckpt", "", "8000") == {"checkpoint": "/ckpt", "server_host": ""}
    with pytest.raises(RuntimeError, match="not both"):
        scope["_policy_source"]("/ckpt", "gpu-box", "8000")
    config = scope["controllers_config"]("fer")["/**"]
    manager = config["controller_manager"]["ros__parameters"]
    assert manager["fer_arm_controller"]["type"] == "joint_trajectory_controller/JointTrajectoryController"
    jtc = config["fer_arm_controller"]["ros__parameters"]
    assert jtc["joints"] == [f"fer_joint{i}" for i in range(1, 8)] and jtc["command_interfaces"] == ["effort"]
    assert [jtc["gains"][j]["p"] for j in jtc["joints"]] == [600, 600, 600, 600, 250, 150, 50]
    with pytest.raises(ValueError, match="arm_id must be"):
        scope["controllers_config"]("ur5")
