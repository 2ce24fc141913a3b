"""A minimal rclpy node for the launcher tests: publishes std_msgs/String "<prefix> <n>".

Parameters: ``topic`` (default "chatter", relative so remappings apply), ``rate_hz``,
``prefix``, and ``exit_after_s``/``exit_code`` to play a node that dies on its own.
"""

from __future__ import annotations

import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from std_msgs.msg import String


def main() -> int:
    rclpy.init(args=sys.argv)
    node = rclpy.create_node("talker")
    topic = node.declare_parameter("topic", "chatter").value
    rate_hz = float(node.declare_parameter("rate_hz", 20.0).value)
    prefix = node.declare_parameter("prefix", "hello").value
    exit_after_s = float(node.declare_parameter("exit_after_s", 0.0).value)
    exit_code = int(node.declare_parameter("exit_code", 0).value)
    pub = node.create_publisher(String, topic, 10)
    count = [0]

    def tick() -> None:
        pub.publish(String(data=f"{prefix} {count[0]}"))
        count[0] += 1

    node.create_timer(1.0 / rate_hz, tick)
    node.get_logger().info(f"publishing on {pub.topic_name} at {rate_hz} Hz")
    start = time.monotonic()
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
            if exit_after_s > 0 and time.monotonic() - start > exit_after_s:
                node.get_logger().error(f"exiting on purpose with code {exit_code}")
                return exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
