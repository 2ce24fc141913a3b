"""ament_python build of vla_ros: installs the modules, the ament index marker and package.xml."""

import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vla_ros"
HERE = Path(__file__).resolve().parent
# One version, in package.xml (colcon and ament read it there).
VERSION = re.search(r"<version>([^<]+)</version>", (HERE / "package.xml").read_text()).group(1)

data_files = [
    # The marker that makes ament_index (and `ros2 run`) find the package.
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (f"share/{PACKAGE}", ["package.xml"]),
]
launch_files = sorted(glob("launch/*.py") + glob("launch/*.yaml") + glob("launch/*.xml"))
if launch_files:
    data_files.append((f"share/{PACKAGE}/launch", launch_files))

setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(exclude=["test"]),
    data_files=data_files,
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla-stack maintainers",
    maintainer_email="vla-stack@example.org",
    description="ROS 2 nodes of the VLA stack",
    license="Apache-2.0",
    # colcon test runs pytest when it is a "test" extra (setuptools dropped tests_require).
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "policy_node = vla_ros.policy_node:main",
            "sim_franka_node = vla_ros.sim_franka_node:main",
            "camera_node = vla_ros.camera_node:main",
            "recorder = vla_ros.recorder:main",
            "launch_graph = vla_ros.launcher:main",
        ],
    },
)
