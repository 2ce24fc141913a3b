"""A node that will not stop, for the launcher tests: ignores SIGINT and SIGTERM and, like
every node started through ``vla_ros.ros_util.run_node``, dumps its stacks on SIGUSR1."""

import faulthandler
import signal
import time

faulthandler.register(signal.SIGUSR1, all_threads=True)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stuck_in_shutdown() -> None:
    while True:
        time.sleep(0.05)


print("hanging", flush=True)
stuck_in_shutdown()
