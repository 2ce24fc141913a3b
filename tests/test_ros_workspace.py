"""The colcon workspace: control_msgs/franka_msgs built by scripts/build_ros2_ws.sh, used by
real rclpy across processes, and the vla_ros package built and tested by colcon.

The pytest process must carry the exports of build_ros2_ws.sh (`make test` evals them).
Regenerate the recorded type hashes after a deliberate interface change with
`python tests/test_ros_workspace.py --write-type-hashes`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ros2_ws" / "src"
INTERFACE_PKGS = ("control_msgs", "franka_msgs")
HOW_TO_RUN = (
    "run the tests through `make test`, or first "
    '`eval "$(bash scripts/setup_env.sh)" && eval "$(bash scripts/build_ros2_ws.sh)"`'
)


def _interface_prefix(package: str) -> Path:
    """The install prefix on AMENT_PREFIX_PATH that holds ``package`` (built by build_ros2_ws.sh)."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        if (prefix / "share" / package / "package.xml").is_file():
            return prefix
    raise AssertionError(f"{package} is not on AMENT_PREFIX_PATH={prefixes}: {HOW_TO_RUN}")


@pytest.fixture(scope="module")
def interfaces() -> Path:
    """Fails (not skips): CI always runs through make, so missing exports are a real error."""
    prefixes = {_interface_prefix(p) for p in INTERFACE_PKGS}
    for pkg in INTERFACE_PKGS:
        try:
            __import__(f"{pkg}.action")
        except ImportError as exc:
            pytest.fail(f"cannot import {pkg}.action ({exc}): {HOW_TO_RUN}")
    assert len(prefixes) == 1, f"control_msgs and franka_msgs come from different prefixes: {prefixes}"
    return prefixes.pop()


def built_type_hashes(prefix: Path, package: str) -> dict[str, str]:
    """RIHS01 hashes of ``package``'s own types, from the type descriptions the build installed."""
    hashes: dict[str, str] = {}
    for path in sorted((prefix / "share" / package).glob("*/*.json")):
        for entry in json.loads(path.read_text())["type_hashes"]:
            if entry["type_name"].startswith(f"{package}/"):
                hashes[entry["type_name"]] = entry["hash_string"]
    return dict(sorted(hashes.items()))


def _recorded(package: str) -> dict[str, str]:
    return json.loads((SRC / package / "type_hashes.json").read_text())["types"]


def _domain(k: int) -> int:
    """A ROS domain per test and pytest process (20-99; other test files use 100 and up)."""
    return 20 + (os.getpid() % 40) * 2 + k


def _ros_env(domain: int) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------- the interfaces themselves


def test_interfaces_import_construct_and_check_types(interfaces):
    from builtin_interfaces.msg import Duration
    from control_msgs.action import FollowJointTrajectory, GripperCommand
    from control_msgs.msg import GripperCommand as GripperCommandMsg
    from control_msgs.msg import JointComponentTolerance, JointTolerance
    from franka_msgs.action import ErrorRecovery, Grasp, Homing, Move
    from franka_msgs.msg import GraspEpsilon
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    names = [f"fr3_joint{i}" for i in range(1, 8)]
    point = JointTrajectoryPoint(positions=[0.1] * 7, time_from_start=Duration(sec=1))
    goal = FollowJointTrajectory.Goal(
        trajectory=JointTrajectory(joint_names=names, points=[point]),
        goal_tolerance=[JointTolerance(name=n, position=0.01) for n in names],
        goal_time_tolerance=Duration(nanosec=500_000_000),
    )
    assert list(goal.trajectory.points[0].positions) == [0.1] * 7
    assert goal.component_path_tolerance == [] and goal.multi_dof_trajectory.points == []
    R = FollowJointTrajectory.Result
    assert (
        R.SUCCESSFUL,
        R.INVALID_GOAL,
        R.INVALID_JOINTS,
        R.OLD_HEADER_TIMESTAMP,
        R.PATH_TOLERANCE_VIOLATED,
        R.GOAL_TOLERANCE_VIOLATED,
    ) == (0, -1, -2, -3, -4, -5)
    assert R(error_code=R.INVALID_JOINTS, error_string="x").error_string == "x"
    assert FollowJointTrajectory.Feedback().joint_names == []
    assert JointComponentTolerance.ROTATION == 5 and JointComponentTolerance.X_AXIS == 1

    g = GripperCommand.Goal(command=GripperCommandMsg(position=0.04, max_effort=20.0))
    assert (g.command.position, g.command.max_effort) == (0.04, 20.0)
    fb = GripperCommand.Feedback(position=0.03, stalled=True)
    assert fb.stalled and not fb.reached_goal and fb.effort == 0.0

    grasp = Grasp.Goal(width=0.02, speed=0.1, force=30.0)
    assert (grasp.epsilon.inner, grasp.epsilon.outer) == (0.005, 0.005)  # upstream defaults
    assert GraspEpsilon(inner=0.01).outer == 0.005
    assert Grasp.Result(success=False, error="no object").error == "no object"
    assert Move.Goal(width=0.08, speed=0.1).width == 0.08
    assert Move.Feedback(current_width=0.05).current_width == 0.05
    assert Homing.Goal.get_fields_and_field_types() == {}
    assert Homing.Result.get_fields_and_field_types() == {"success": "boolean", "error": "string"}
    assert ErrorRecovery.Goal.get_fields_and_field_types() == {}

    # With field checks on (ROS_PYTHON_CHECK_FIELDS=1 or check_fields=True) the generated
    # classes refuse wrong types.
    with pytest.raises(AssertionError):
        Move.Goal(width="wide", check_fields=True)
    with pytest.raises(AssertionError):
        FollowJointTrajectory.Goal(trajectory=point, check_fields=True)


def test_field_layout_matches_upstream_jazzy(interfaces):
    """Field names and types as in control_msgs 5.x / franka_ros2 jazzy (order matters on the wire)."""
    from control_msgs.action import FollowJointTrajectory
    from franka_msgs.action import Grasp

    assert list(FollowJointTrajectory.Goal.get_fields_and_field_types().items()) == [
        ("trajectory", "trajectory_msgs/JointTrajectory"),
        ("multi_dof_trajectory", "trajectory_msgs/MultiDOFJointTrajectory"),
        ("path_tolerance", "sequence<control_msgs/JointTolerance>"),
        ("component_path_tolerance", "sequence<control_msgs/JointComponentTolerance>"),
        ("goal_tolerance", "sequence<control_msgs/JointTolerance>"),
        ("component_goal_tolerance", "sequence<control_msgs/JointComponentTolerance>"),
        ("goal_time_tolerance", "builtin_interfaces/Duration"),
    ]
    assert list(FollowJointTrajectory.Result.get_fields_and_field_types()) == ["error_code", "error_string"]
    assert list(Grasp.Goal.get_fields_and_field_types().items()) == [
        ("width", "double"),
        ("epsilon", "franka_msgs/GraspEpsilon"),
        ("speed", "double"),
        ("force", "double"),
    ]


def test_build_produces_the_recorded_type_hashes(interfaces):
    """Guards against edits of the .msg/.action files: a changed hash no longer matches a real
    controller's. The FollowJointTrajectory and GripperCommand values equal those of an
    upstream control_msgs 5.x build."""
    for pkg in INTERFACE_PKGS:
        recorded = _recorded(pkg)
        built = built_type_hashes(interfaces, pkg)
        assert built, f"no type descriptions under {interfaces}/share/{pkg}"
        changed = {
            t: (recorded.get(t), built.get(t))
            for t in recorded.keys() | built.keys()
            if recorded.get(t) != built.get(t)
        }
        assert not changed, f"{pkg}: type hashes differ from {pkg}/type_hashes.json (recorded, built): {changed}"
    assert _recorded("control_msgs")["control_msgs/action/FollowJointTrajectory"] == (
        "RIHS01_738ebcb7a2d7cfa42f9f1001cc99ce3a4383d1cfe508015d9be8485e4b1c66f6"
    )


# ---------------------------------------------------------------- real action across processes

SERVER = textwrap.dedent(
    """
    import sys, time
    import rclpy
    from rclpy.action import ActionServer, GoalResponse
    from rclpy.executors import ExternalShutdownException
    from control_msgs.action import FollowJointTrajectory as FJT

    JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]

    def goal_callback(goal):
        # Like a JointTrajectoryController: refuse a goal for other joints.
        return GoalResponse.ACCEPT if list(goal.trajectory.joint_names) == JOINTS else GoalResponse.REJECT

    def execute(handle):
        traj = handle.request.trajectory
        result = FJT.Result()
        if not traj.points:
            handle.abort()
            result.error_code = FJT.Result.INVALID_GOAL
            result.error_string = "empty trajectory"
            return result
        for point in traj.points:
            fb = FJT.Feedback(joint_names=JOINTS)
            fb.desired = point
            fb.actual.positions = list(point.positions)
            handle.publish_feedback(fb)
            time.sleep(0.05)
        handle.succeed()
        result.error_code = FJT.Result.SUCCESSFUL
        last = traj.points[-1]
        result.error_string = f"executed {len(traj.points)} points, last q7={last.positions[6]:.3f}"
        return result

    rclpy.init()
    node = rclpy.create_node("fake_joint_trajectory_controller")
    server = ActionServer(node, FJT, "/fr3_arm_controller/follow_joint_trajectory", execute,
                          goal_callback=goal_callback)
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    """
)


def test_follow_joint_trajectory_action_between_processes(interfaces, tmp_path):
    import rclpy
    from builtin_interfaces.msg import Duration
    from control_msgs.action import FollowJointTrajectory as FJT
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    domain = _domain(0)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script)], env=_ros_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        assert server.stdout.readline().strip() == "READY", server.communicate(timeout=10)[0]
        node = rclpy.create_node(f"fjt_client_{os.getpid()}", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = ActionClient(node, FJT, "/fr3_arm_controller/follow_joint_trajectory")
        assert client.wait_for_server(timeout_sec=30), "action server not discovered across processes"

        def run(future, timeout=30.0):
            executor.spin_until_future_complete(future, timeout_sec=timeout)
            assert future.done(), "no answer from the action server"
            return future.result()

        joints = [f"fr3_joint{i}" for i in range(1, 8)]
        points = [JointTrajectoryPoint(positions=[0.1 * k] * 7, time_from_start=Duration(sec=k)) for k in (1, 2, 3)]
        feedback = []
        handle = run(
            client.send_goal_async(
                FJT.Goal(trajectory=JointTrajectory(joint_names=joints, points=points)),
                feedback_callback=lambda msg: feedback.append(msg.feedback),
            )
        )
        assert handle.accepted
        answer = run(handle.get_result_async())
        assert answer.result.error_code == FJT.Result.SUCCESSFUL
        assert answer.result.error_string == "executed 3 points, last q7=0.300"
        # Feedback may arrive after the result; the values that did arrive crossed intact.
        executor.spin_once(timeout_sec=0.2)
        assert feedback and list(feedback[-1].joint_names) == joints
        assert list(feedback[-1].actual.positions) in ([0.1 * k] * 7 for k in (1, 2, 3))

        # The server's verdicts cross too: an empty trajectory aborts with INVALID_GOAL, and a
        # goal for other joints is rejected.
        handle = run(client.send_goal_async(FJT.Goal(trajectory=JointTrajectory(joint_names=joints))))
        assert run(handle.get_result_async()).result.error_code == FJT.Result.INVALID_GOAL
        wrong = JointTrajectory(joint_names=[f"fer_joint{i}" for i in range(1, 8)], points=points)
        assert not run(client.send_goal_async(FJT.Goal(trajectory=wrong))).accepted

        # What the other process advertises on the wire is the hash we recorded.
        infos = node.get_publishers_info_by_topic("/fr3_arm_controller/follow_joint_trajectory/_action/feedback")
        assert [str(i.topic_type_hash) for i in infos] == [
            _recorded("control_msgs")["control_msgs/action/FollowJointTrajectory_FeedbackMessage"]
        ]
        client.destroy()
        node.destroy_node()
    finally:
        context.try_shutdown()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---------------------------------------------------------------- colcon build/test of vla_ros


def test_colcon_builds_and_tests_vla_ros(interfaces, tmp_path):
    env = dict(os.environ, COLCON_HOME=str(tmp_path / "colcon_home"), PYTHONDONTWRITEBYTECODE="1")
    dirs = {k: tmp_path / k for k in ("build", "install", "test_results", "log")}
    common = [
        "--base-paths",
        str(SRC / "vla_ros"),
        "--build-base",
        str(dirs["build"]),
        "--install-base",
        str(dirs["install"]),
    ]
    colcon = [sys.executable, "-m", "colcon", "--log-base", str(dirs["log"])]

    def run(args: list[str]) -> str:
        proc = subprocess.run(colcon + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"colcon {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    out = run(["build", *common, "--event-handlers", "console_cohesion+"])
    assert "Finished <<< vla_ros" in out
    install = dirs["install"] / "vla_ros"
    for script in ("policy_node", "sim_franka_node", "camera_node", "recorder", "launch_graph"):
        assert (install / "lib" / "vla_ros" / script).is_file(), f"console script {script} not installed"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "vla_ros").is_file()
    installed_xml = ET.parse(install / "share" / "vla_ros" / "package.xml").getroot()
    assert installed_xml.findtext("name") == "vla_ros"

    # Every ROS dependency of the installed package resolves through AMENT_PREFIX_PATH, the
    # interface packages from the build_ros2_ws.sh prefix.
    deps = [e.text for e in installed_xml if e.tag == "depend"]
    probe = textwrap.dedent(
        f"""
        from ament_index_python.packages import get_package_prefix
        for dep in {deps!r} + ["vla_ros"]:
            print(dep, get_package_prefix(dep))
        """
    )
    env_run = dict(env, AMENT_PREFIX_PATH=os.pathsep.join([str(install), env["AMENT_PREFIX_PATH"]]))
    proc = subprocess.run([sys.executable, "-c", probe], env=env_run, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert where["control_msgs"] == where["franka_msgs"] == str(interfaces)
    assert where["vla_ros"] == str(install)

    run(
        [
            "test",
            *common,
            "--test-result-base",
            str(dirs["test_results"]),
            "--return-code-on-test-failure",
            "--event-handlers",
            "console_cohesion+",
        ]
    )
    summary = run(["test-result", "--test-result-base", str(dirs["test_results"]), "--all", "--verbose"])
    counts = re.search(r"Summary: (\d+) tests, (\d+) errors, (\d+) failures", summary)
    assert counts and int(counts[1]) >= 2 and counts[2] == counts[3] == "0", summary
    # The source tree stays clean: everything went to tmp_path.
    assert not list((SRC / "vla_ros").glob("*.egg-info")) and not (SRC / "vla_ros" / "build").exists()


def _write_type_hashes() -> None:
    prefixes = {p: _interface_prefix(p) for p in INTERFACE_PKGS}
    for pkg, prefix in prefixes.items():
        out = SRC / pkg / "type_hashes.json"
        doc = {
            "about": f"RIHS01 hashes of {pkg}'s types as built from this directory; "
            "tests/test_ros_workspace.py checks the build still produces them",
            "types": built_type_hashes(prefix, pkg),
        }
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {len(doc['types'])} hashes to {out}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-type-hashes"]:
        sys.exit(f"usage: {sys.argv[0]} --write-type-hashes")
    _write_type_hashes()
