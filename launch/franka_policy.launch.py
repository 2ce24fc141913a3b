"""A Franka arm, two RealSense cameras and the VLA policy node on a robot PC (ROS 2 Jazzy).

Needs franka_ros2 (franka_bringup, franka_gripper; Jazzy branch), realsense2_camera and this
repository's ros2_ws built with colcon and sourced. Examples:

    ros2 launch launch/franka_policy.launch.py robot_ip:=172.16.0.2 \
        policy_checkpoint:=/data/checkpoints/lift \
        scene_camera_serial:=_123456789 wrist_camera_serial:=_987654321
    # the model on a GPU workstation running `vla serve` instead:
    ros2 launch launch/franka_policy.launch.py robot_ip:=172.16.0.2 server_host:=gpu-box
    # record everything the policy sees and does:
    ros2 launch launch/franka_policy.launch.py ... record:=true record_dir:=/data/bags/run1

It includes franka_bringup's franka.launch.py with a controllers file that adds a
JointTrajectoryController (``<arm_id>_arm_controller``, effort interface, the PD gains of
franka_fr3_moveit_config): the policy sends JointTrajectory goals that the controller splines at
1 kHz, never raw targets at the policy rate (libfranka's rate limiter is off in franka_ros2).
"""

import os
import tempfile

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS_DIR = os.path.join(HERE, "params")


def controllers_config(arm_id):
    """ros2_control parameters: franka_bringup's broadcasters plus a JointTrajectoryController.

    Same layout as franka_bringup/config/controllers.yaml ('/**' sections, so any namespace
    works); gains from franka_fr3_moveit_config/config/fr3_ros_controllers.yaml.
    """
    if arm_id not in ("fr3", "fer"):
        raise ValueError(f"arm_id must be 'fr3' or 'fer', got {arm_id!r}")
    joints = [f"{arm_id}_joint{i}" for i in range(1, 8)]
    p_gains = [600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0]
    d_gains = [30.0, 30.0, 30.0, 30.0, 10.0, 10.0, 5.0]
    controller = f"{arm_id}_arm_controller"
    return {
        "/**": {
            "controller_manager": {
                "ros__parameters": {
                    "update_rate": 1000,
                    "thread_priority": 98,
                    "overruns": {"manage": False, "print_warnings": False},
                    controller: {"type": "joint_trajectory_controller/JointTrajectoryController"},
                    "joint_state_broadcaster": {"type": "joint_state_broadcaster/JointStateBroadcaster"},
                    "franka_robot_state_broadcaster": {
                        "type": "franka_robot_state_broadcaster/FrankaRobotStateBroadcaster",
                        "state_interfaces": "robot_state",
                    },
                }
            },
            controller: {
                "ros__parameters": {
                    "command_interfaces": ["effort"],
                    "state_interfaces": ["position", "velocity"],
                    "joints": joints,
                    "interpolation_method": "splines",
                    "allow_partial_joints_goal": False,
                    "gains": {
                        j: {"p": p, "d": d, "i": 0.0, "i_clamp": 1.0} for j, p, d in zip(joints, p_gains, d_gains)
                    },
                }
            },
        }
    }


def _write_controllers_yaml(arm_id):
    import yaml  # PyYAML ships with ROS 2 (launch depends on it)

    handle = tempfile.NamedTemporaryFile("w", prefix=f"{arm_id}_controllers_", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(controllers_config(arm_id), handle, sort_keys=False)
    return handle.name


def _policy_source(checkpoint, server_host, server_port):
    """Policy node parameters for a local checkpoint or a policy server (neither: the params file's)."""
    if checkpoint and server_host:
        raise RuntimeError(
            "give one of policy_checkpoint:=<dir> (model on this PC) or "
            "server_host:=<host> (model behind `vla serve`), not both"
        )
    if checkpoint:
        return {"checkpoint": checkpoint, "server_host": ""}
    if server_host:
        return {"checkpoint": "", "server_host": server_host, "server_port": int(server_port)}
    return {}


def launch_setup(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    arm_id = arg["arm_id"]
    controller = f"{arm_id}_arm_controller"
    controllers_yaml = _write_controllers_yaml(arm_id)
    policy_overrides = _policy_source(arg["policy_checkpoint"], arg["server_host"], arg["server_port"])

    franka = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("franka_bringup"), "launch", "franka.launch.py"])
        ),
        launch_arguments={
            "robot_type": arm_id,
            "robot_ip": arg["robot_ip"],
            "load_gripper": arg["load_gripper"],
            "use_fake_hardware": arg["use_fake_hardware"],
            "fake_sensor_commands": arg["use_fake_hardware"],
            "joint_state_rate": arg["joint_state_rate"],
            "controllers_yaml": controllers_yaml,
        }.items(),
    )
    arm_controller = Node(
        package="controller_manager",
        executable="spawner",
        arguments=[controller, "--controller-manager-timeout", "60"],
        output="screen",
    )

    def camera(camera_name, serial):
        # Topics /<name>/<name>/color/image_raw, the names the policy node subscribes to.
        return IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("realsense2_camera"), "launch", "rs_launch.py"])
            ),
            launch_arguments={
                "camera_name": camera_name,
                "camera_namespace": camera_name,
                "serial_no": serial or "''",
                "rgb_camera.color_profile": arg["camera_profile"],
                "enable_depth": "false",
                "enable_infra1": "false",
                "enable_infra2": "false",
            }.items(),
        )

    policy = Node(
        package="vla_ros",
        executable="policy_node",
        name="vla_policy",
        output="screen",
        parameters=[
            arg["params_file"],
            {
                **policy_overrides,
                "arm_id": arm_id,
                "controller": controller,
                "robot": "fr3" if arm_id == "fr3" else "panda",
            },
        ],
    )

    actions = [
        LogInfo(
            msg=f"{arm_id} at {arg['robot_ip']}, controller {controller} ({controllers_yaml}); policy: "
            + (arg["policy_checkpoint"] or arg["server_host"] or f"as set in {arg['params_file']}")
        ),
        franka,
        arm_controller,
        camera("camera", arg["scene_camera_serial"]),
    ]
    if arg["enable_wrist_camera"].lower() == "true":
        actions.append(camera("wrist_camera", arg["wrist_camera_serial"]))
    actions.append(policy)
    if arg["record"].lower() == "true":
        recorder_params = [arg["recorder_params"]]
        if arg["record_dir"]:
            recorder_params.append({"output_dir": arg["record_dir"]})
        if controller != "fr3_arm_controller":
            recorder_params.append(
                {
                    "topics": [
                        "/camera/camera/color/image_raw",
                        "/wrist_camera/wrist_camera/color/image_raw",
                        "/joint_states",
                        f"/{controller}/joint_trajectory",
                        "/task_instruction",
                        "/diagnostics",
                        "/vla/policy_events",
                    ]
                }
            )
        actions.append(
            Node(package="vla_ros", executable="recorder", name="recorder", output="screen", parameters=recorder_params)
        )
    return actions


ARGUMENTS = {
    "robot_ip": (None, "hostname or IP address of the robot (FCI)"),
    "arm_id": ("fr3", "fr3 (Franka Research 3) or fer (Panda)"),
    "load_gripper": ("true", "start franka_gripper (Franka Hand)"),
    "use_fake_hardware": ("false", "mock_components/GenericSystem instead of the robot, for a dry run"),
    "joint_state_rate": ("100", "joint_state_publisher rate for /joint_states [Hz]"),
    "policy_checkpoint": ("", "checkpoint directory for the policy node ('' = params_file's)"),
    "server_host": ("", "host running `vla serve`, instead of policy_checkpoint"),
    "server_port": ("8000", "port of `vla serve`"),
    "params_file": (os.path.join(PARAMS_DIR, "policy_fr3.yaml"), "policy node parameter file"),
    "scene_camera_serial": ("", "RealSense serial of the scene camera, e.g. _123456789 ('' = the only one)"),
    "wrist_camera_serial": ("", "RealSense serial of the wrist camera"),
    "enable_wrist_camera": ("true", "start the wrist camera"),
    "camera_profile": ("640x480x30", "rgb_camera.color_profile of both cameras (WxHxFPS)"),
    "record": ("false", "record the policy's inputs and outputs with vla_ros recorder (MCAP)"),
    "record_dir": ("", "bag directory (new); '' = ./rosbag2_<date>-<time>"),
    "recorder_params": (os.path.join(PARAMS_DIR, "recorder.yaml"), "recorder parameter file"),
}


def generate_launch_description():
    declared = []
    for name, (default, description) in ARGUMENTS.items():
        if default is None:
            declared.append(DeclareLaunchArgument(name, description=description))
        elif name == "arm_id":
            declared.append(
                DeclareLaunchArgument(name, default_value=default, description=description, choices=["fr3", "fer"])
            )
        else:
            declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription(declared + [OpaqueFunction(function=launch_setup)])
