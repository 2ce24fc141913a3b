"""Direction of imports, read from the source (an AST pass that also sees imports inside
functions, methods and ``if TYPE_CHECKING`` blocks).

Layers, lowest first:

* the ``vla`` core (types, flow math, policies, datasets, training, serving): imports neither
  ``sim``, ``hardware``, ROS nor a simulator or camera SDK, at module level or in a function;
* ``sim`` (simulators, experts) and ``hardware`` (robots, cameras, safety): may import the core;
* the application layer (``vla.cli``, ``vla.evaluation``, ``vla.bench``, ``vla.teleop``) wires the core to
  simulators and may import anything; nothing below it imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vla", "sim", "hardware")
APP_LAYER = ("vla.cli", "vla.evaluation", "vla.bench", "vla.teleop")
ROS = (
    "rclpy",
    "rosbags",
    "sensor_msgs",
    "std_msgs",
    "trajectory_msgs",
    "diagnostic_msgs",
    "control_msgs",
    "franka_msgs",
    "vla_ros",
    "launch",
    "launch_ros",
)
VENDOR_SDKS = ("mani_skill", "sapien", "robosuite", "metaworld", "libero", "mujoco", "pyrealsense2")
CORE_FORBIDDEN = ("sim", "hardware", *ROS, *VENDOR_SDKS, *APP_LAYER)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module ``source`` imports anywhere in its body, with line numbers; relative imports
    resolved against ``module``."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from pkg import submodule` imports pkg.submodule too
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def within(name: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def source_modules(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def layer_violations(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    modules = source_modules(root, packages)
    violations = []
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        in_app = within(mod, APP_LAYER) is not None
        reported: set[int] = set()  # one report per import statement
        for target, line in imports_of(path.read_text(), mod, is_package):
            if line in reported:
                continue
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if mod.split(".")[0] == "vla" and not in_app and within(target, CORE_FORBIDDEN):
                violations.append(f"{where} (the vla core must not import {within(target, CORE_FORBIDDEN)})")
                reported.add(line)
            elif not in_app and within(target, APP_LAYER):
                violations.append(f"{where} (only the application layer imports {within(target, APP_LAYER)})")
                reported.add(line)
    return violations


def internal_cycles(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Cycles between modules of our packages (a package's __init__ re-exporting its own
    submodules is not a cycle: it is how the package presents itself)."""
    modules = source_modules(root, packages)
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        deps = set()
        for target, _ in imports_of(path.read_text(), mod, path.name == "__init__.py"):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != mod and not mod.startswith(target + "."):
                if not (path.name == "__init__.py" and target.startswith(mod + ".")):
                    deps.add(target)
        graph[mod] = deps
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
    return cycles


def test_every_core_directory_is_a_package():
    """A directory without __init__.py is invisible to pkgutil walks (vla/datasets was)."""
    missing = [
        str(d.relative_to(REPO))
        for pkg in PACKAGES
        for d in (REPO / pkg).rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert not missing, f"directories with modules but no __init__.py: {missing}"


def test_layers_point_one_way():
    violations = layer_violations()
    assert not violations, "\n".join(violations)


def test_no_import_cycles_between_our_modules():
    cycles = internal_cycles()
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "body",
    [
        "from sim import make_env\n",
        "def f():\n    import sim.registry\n",
        "class A:\n    def m(self):\n        from hardware.safety import SafetyLayer\n",
        "def f():\n    from ..cli import main\n",
        "if True:\n    import rclpy\n",
        "def f():\n    import mani_skill.envs\n",
    ],
)
def test_the_check_catches_a_core_import_of_a_lower_layer(tmp_path, body):
    """The checker itself can fail: a core module importing sim/hardware/ROS/the app layer,
    at any depth, is reported."""
    for pkg in ("vla", "vla/policies", "vla/cli", "sim", "hardware"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "vla/policies/bad.py").write_text(textwrap.dedent(body))
    violations = layer_violations(tmp_path)
    assert len(violations) == 1 and "vla/policies/bad.py" in violations[0], violations


def test_the_check_allows_the_app_layer_and_sees_cycles(tmp_path):
    for pkg in ("vla", "vla/cli", "sim"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "vla/cli/main.py").write_text("def f():\n    from sim import make_env\n")
    (tmp_path / "sim/a.py").write_text("def f():\n    from sim.b import g\n")
    (tmp_path / "sim/b.py").write_text("from sim.a import f\n")
    assert layer_violations(tmp_path) == []
    assert internal_cycles(tmp_path) == [["sim.a", "sim.b", "sim.a"]]


def test_importing_the_core_loads_no_simulator_ros_or_dataset_library():
    """The runtime view of the same rule: importing every core module (the app layer excluded)
    pulls in no simulator, ROS, camera SDK, and not lerobot (loaded only when a dataset is)."""
    heavy = (
        "sim",
        "hardware",
        "mani_skill",
        "sapien",
        "robosuite",
        "metaworld",
        "libero",
        "rclpy",
        "pyrealsense2",
        "lerobot",
    )
    code = f"""
import importlib, pkgutil, sys
import vla
for info in pkgutil.walk_packages(vla.__path__, "vla."):
    if not info.name.startswith({APP_LAYER!r}):
        importlib.import_module(info.name)
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "", f"importing the vla core loaded {out.strip()}"
