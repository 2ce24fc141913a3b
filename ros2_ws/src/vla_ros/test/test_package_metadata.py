"""`colcon test` checks that package.xml and setup.py say what the modules need.

A ROS package imported by a node but missing from package.xml builds fine here and breaks on
a robot PC that installs dependencies with rosdep; a console script whose module or main()
was renamed installs fine and fails only when launched.
"""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parents[1]
MODULE_DIR = PKG_DIR / "vla_ros"


def _depends() -> set[str]:
    root = ET.parse(PKG_DIR / "package.xml").getroot()
    assert root.findtext("name") == "vla_ros"
    assert root.find("export/build_type").text == "ament_python"
    return {e.text.strip() for e in root if e.tag in ("depend", "exec_depend")}


def _ros_imports(path: Path) -> set[str]:
    """Top-level packages imported as ROS interfaces (`from X.msg import ...`) or rclpy."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "rclpy" or (len(parts) > 1 and parts[1] in ("msg", "srv", "action")):
                found.add(parts[0])
    return found


def test_every_imported_ros_package_is_a_declared_dependency():
    depends = _depends()
    modules = sorted(MODULE_DIR.glob("*.py"))
    assert modules, f"no modules in {MODULE_DIR}"
    missing = {f"{m.name}: {pkg}" for m in modules for pkg in _ros_imports(m) - depends}
    assert not missing, f"add these to package.xml as <depend>: {sorted(missing)}"
    assert {"rclpy", "control_msgs", "franka_msgs"} <= depends


def test_console_scripts_point_at_existing_main_functions():
    entries = re.findall(r'"(\w+) = (vla_ros\.\w+):(\w+)"', (PKG_DIR / "setup.py").read_text())
    assert {e[0] for e in entries} >= {"policy_node", "sim_franka_node", "camera_node", "recorder", "launch_graph"}
    for script, module, func in entries:
        path = PKG_DIR / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"console script {script}: {path} does not exist"
        funcs = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in funcs, f"console script {script}: {module} has no top-level {func}()"
