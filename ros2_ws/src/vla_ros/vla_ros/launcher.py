"""Bring up a graph of ROS 2 nodes on a machine without the ``ros2`` CLI or ``launch``.

Usage:
    python -m vla_ros.launcher launch/graphs/sim_lift.yaml [--set policy.device=cuda] \
        [--enable recorder] [--domain-id 7] [--dry-run]

``launch``/``launch_ros`` are not on PyPI, so this covers what our graphs need from them: one
process (and process group) per node, a merged parameter file per node, remappings, output
prefixed with the node name, respawn, and ``required`` nodes whose exit ends the whole graph
(with a non-zero exit status if it failed). Shutdown escalates SIGINT -> SIGTERM -> SIGKILL; a
Python node (``module:``) still alive before the SIGKILL first gets SIGUSR1, on which
``run_node`` prints every thread's stack, so the log says where it hung.

Graph YAML:
    description: optional text
    env: {VAR: value}                 # optional, for every node
    nodes:
      - name: policy                  # ROS node name (remapped with __node:=name), output prefix
        module: vla_ros.policy_node   # or executable: path (relative to the YAML) or PATH name
        args: []                      # optional, before --ros-args
        params_file: ../params/policy_sim_lift.yaml   # relative to the YAML
        parameters: {device: cpu}     # inline; override the file
        remappings: {/joint_states: /sim/joint_states}
        respawn: false
        respawn_delay: 1.0
        required: true
        enabled: true                 # false: skipped unless --enable NAME
        env: {VAR: value}

Python API (tests):
    with launch(Graph.from_yaml(path, ["talker.prefix=hi"])) as running:
        running.wait_ready(["/chatter"], timeout=20)
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

GRAPH_KEYS = ("description", "env", "nodes")
NODE_KEYS = (
    "name",
    "module",
    "executable",
    "args",
    "params_file",
    "parameters",
    "remappings",
    "respawn",
    "respawn_delay",
    "required",
    "enabled",
    "env",
)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STACK_DUMP_WAIT_S = 1.0  # after SIGUSR1, before SIGKILL: time for a hung node to print its stacks
MAX_DOMAIN_ID = 232  # Fast DDS/Cyclone port arithmetic limit
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # ros2_ws/src/vla_ros: nodes run from source


class GraphError(ValueError):
    """A graph YAML, override or option is invalid; the message says what and where."""


# --------------------------------------------------------------------------- parameters (pure)
def flatten_parameters(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: ROS parameter files nest namespaces, overrides are dotted."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_parameters(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_parameter_value(name: str, value: Any) -> None:
    """Refuse values a ROS parameter cannot hold (null, nested or mixed lists)."""
    scalar = (bool, int, float, str)
    if isinstance(value, scalar):
        return
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if kinds <= {bool} or kinds <= {int} or kinds <= {float} or kinds <= {str}:
            return
        raise GraphError(
            f"parameter {name!r}: a ROS array parameter holds one type (all bools, ints, floats "
            f"or strings: write 0.0, not 0, in a list of floats); got {value!r}"
        )
    raise GraphError(
        f"parameter {name!r}: {value!r} ({type(value).__name__}) is not a ROS parameter value "
        "(bool, int, float, string or a list of one of these)"
    )


def params_file_sections(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """{node selector: flat ros__parameters} of a ROS 2 parameter file ('/**', 'name', '/ns/name')."""
    if not isinstance(data, Mapping):
        raise GraphError(f"{path}: a ROS parameter file maps node names to ros__parameters; got {type(data).__name__}")
    sections: dict[str, dict[str, Any]] = {}

    def walk(node: Mapping[str, Any], selector: str) -> None:
        for key, value in node.items():
            if key == "ros__parameters":
                if not isinstance(value, Mapping):
                    raise GraphError(f"{path}: ros__parameters of {selector or '/'} must be a mapping")
                sections.setdefault(selector or "/", {}).update(flatten_parameters(value))
            elif isinstance(value, Mapping):
                walk(value, f"{selector}/{str(key).strip('/')}")
            else:
                raise GraphError(
                    f"{path}: {selector}/{key}: expected node sections holding 'ros__parameters', got a value {value!r}"
                )

    walk(data, "")
    return sections


def _selector_matches(selector: str, name: str) -> bool:
    return selector in ("/**", f"/{name}", f"/**/{name}")


def node_parameters(name: str, sections: Mapping[str, Mapping[str, Any]], path: Path) -> dict[str, Any]:
    """The parameters a file gives node ``name``: '/**' first, then sections naming it."""
    matching = [s for s in sections if _selector_matches(s, name)]
    if not matching:
        raise GraphError(
            f"{path} has no section for node {name!r} (sections: {', '.join(sections) or 'none'}); "
            f"use '/**:' or '{name}:' above 'ros__parameters:'"
        )
    merged: dict[str, Any] = {}
    for selector in sorted(matching, key=lambda s: s != "/**"):
        merged.update(sections[selector])
    return merged


def split_override_key(key: str) -> tuple[str, str]:
    """'node.param.sub' -> ('node', 'param.sub')."""
    node, _, param = key.partition(".")
    if not node or not param:
        raise GraphError(f"override {key!r}: expected NODE.PARAM=VALUE, e.g. policy.device=cuda")
    return node, param


def parse_override(text: str) -> tuple[str, str, Any]:
    """'node.param=value' -> (node, param, YAML-typed value): '3' is an int, 'true' a bool, '[a, b]' a list."""
    if "=" not in text:
        raise GraphError(f"override {text!r}: expected NODE.PARAM=VALUE, e.g. policy.device=cuda")
    key, raw = text.split("=", 1)
    node, param = split_override_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return node, param, value


# --------------------------------------------------------------------------- graph
@dataclass(frozen=True)
class NodeSpec:
    """One node process of a graph."""

    name: str
    module: str | None = None
    executable: str | None = None
    args: tuple[str, ...] = ()
    params_file: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # flat (dotted) names, highest precedence
    remappings: dict[str, str] = field(default_factory=dict)
    respawn: bool = False
    respawn_delay: float = 1.0
    required: bool = False
    enabled: bool = True
    env: dict[str, str] = field(default_factory=dict)

    def merged_parameters(self) -> dict[str, Any]:
        """params_file ('/**' then this node's section) overridden by the inline parameters."""
        merged: dict[str, Any] = {}
        if self.params_file is not None:
            data = yaml.safe_load(self.params_file.read_text()) or {}
            merged.update(node_parameters(self.name, params_file_sections(data, self.params_file), self.params_file))
        merged.update(self.parameters)
        for name, value in merged.items():
            check_parameter_value(f"{self.name}.{name}", value)
        return merged

    def command(self, params_path: Path | None) -> list[str]:
        """The argv that starts this node with its merged parameter file and remappings."""
        if self.module:
            argv = [sys.executable, "-m", self.module]
        else:
            assert self.executable is not None
            exe = self.executable
            argv = [sys.executable, exe] if exe.endswith(".py") else [exe]
        argv += list(self.args) + ["--ros-args", "-r", f"__node:={self.name}"]
        if params_path is not None:
            argv += ["--params-file", str(params_path)]
        for src, dst in self.remappings.items():
            argv += ["-r", f"{src}:={dst}"]
        return argv


def _resolve_executable(value: str, base: Path, where: str) -> str:
    if "/" in value:
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise GraphError(f"{where}: executable {value!r} not found (resolved to {path})")
        if not path.suffix == ".py" and not os.access(path, os.X_OK):
            raise GraphError(f"{where}: {path} is not executable")
        return str(path.resolve())
    found = shutil.which(value)
    if found is None:
        raise GraphError(f"{where}: executable {value!r} not found on PATH")
    return found


def _module_exists(module: str) -> bool:
    extra = str(PACKAGE_ROOT)
    added = extra not in sys.path
    if added:
        sys.path.append(extra)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        if added:
            sys.path.remove(extra)


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise GraphError(f"{where}: {what} must be a {' or '.join(k.__name__ for k in kinds)}; got {value!r}")
    return value


def _string_map(value: Any, where: str, what: str) -> dict[str, str]:
    _expect(value, dict, where, what)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise GraphError(f"{where}: {what} maps strings to strings; got {k!r}: {v!r}")
    return {k: str(v) for k, v in value.items()}


def parse_node(entry: Any, index: int, base: Path, source: str) -> NodeSpec:
    """Validate one `nodes:` entry of a graph YAML into a NodeSpec (paths resolved against ``base``)."""
    where = f"{source}: nodes[{index}]"
    if not isinstance(entry, dict):
        raise GraphError(f"{where}: each node is a mapping with keys {', '.join(NODE_KEYS)}; got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise GraphError(
            f"{where}: 'name' must be a ROS node name (letters, digits, _; not starting with a digit); got {name!r}"
        )
    where = f"{source}: node {name!r}"
    unknown = sorted(set(entry) - set(NODE_KEYS))
    if unknown:
        raise GraphError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(NODE_KEYS)}")
    module, executable = entry.get("module"), entry.get("executable")
    if (module is None) == (executable is None):
        raise GraphError(f"{where}: give exactly one of 'module' (e.g. vla_ros.policy_node) or 'executable'")
    if module is not None:
        _expect(module, str, where, "module")
        if not _module_exists(module):
            raise GraphError(f"{where}: Python module {module!r} not found")
    else:
        executable = _resolve_executable(_expect(executable, str, where, "executable"), base, where)
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise GraphError(f"{where}: args must be a list of strings; got {args!r}")
    params_file = None
    if entry.get("params_file") is not None:
        raw = _expect(entry["params_file"], str, where, "params_file")
        params_file = Path(raw) if Path(raw).is_absolute() else (base / raw)
        if not params_file.is_file():
            raise GraphError(f"{where}: params_file {raw!r} not found (resolved to {params_file.resolve()})")
    parameters = flatten_parameters(_expect(entry.get("parameters", {}) or {}, dict, where, "parameters"))
    for pname, value in parameters.items():
        check_parameter_value(f"{name}.{pname}", value)
    delay = entry.get("respawn_delay", 1.0)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise GraphError(f"{where}: respawn_delay must be a number of seconds >= 0; got {delay!r}")
    spec = NodeSpec(
        name=name,
        module=module,
        executable=executable,
        args=tuple(str(a) for a in args),
        params_file=params_file,
        parameters=parameters,
        remappings=_string_map(entry.get("remappings", {}) or {}, where, "remappings"),
        respawn=_expect(entry.get("respawn", False), bool, where, "respawn"),
        respawn_delay=float(delay),
        required=_expect(entry.get("required", False), bool, where, "required"),
        enabled=_expect(entry.get("enabled", True), bool, where, "enabled"),
        env=_string_map(entry.get("env", {}) or {}, where, "env"),
    )
    spec.merged_parameters()  # surfaces a bad params file now, not when the node starts
    return spec


@dataclass(frozen=True)
class Graph:
    """A validated set of nodes to run together."""

    nodes: tuple[NodeSpec, ...]
    env: dict[str, str] = field(default_factory=dict)
    domain_id: int | None = None
    source: Path | None = None
    description: str = ""

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise GraphError(f"{self.source or 'graph'}: duplicate node name(s) {', '.join(dupes)}")
        if self.domain_id is not None and not (0 <= self.domain_id <= MAX_DOMAIN_ID):
            raise GraphError(f"domain id must be in 0..{MAX_DOMAIN_ID}; got {self.domain_id}")

    @classmethod
    def from_dict(
        cls,
        data: Any,
        base: Path,
        source: str = "graph",
        overrides: Iterable[str] | Mapping[str, Any] = (),
        enable: Iterable[str] = (),
        disable: Iterable[str] = (),
        domain_id: int | None = None,
    ) -> Graph:
        if not isinstance(data, dict):
            raise GraphError(f"{source}: a graph is a mapping with keys {', '.join(GRAPH_KEYS)}")
        unknown = sorted(set(data) - set(GRAPH_KEYS))
        if unknown:
            raise GraphError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRAPH_KEYS)}"
            )
        entries = data.get("nodes")
        if not isinstance(entries, list) or not entries:
            raise GraphError(f"{source}: 'nodes' must be a non-empty list of nodes")
        nodes = [parse_node(e, i, base, source) for i, e in enumerate(entries)]
        graph = cls(
            nodes=tuple(nodes),
            env=_string_map(data.get("env", {}) or {}, source, "env"),
            domain_id=domain_id,
            source=Path(source) if source != "graph" else None,
            description=str(data.get("description", "")),
        )
        return graph.with_overrides(overrides).with_enabled(enable, True).with_enabled(disable, False)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike,
        overrides: Iterable[str] | Mapping[str, Any] = (),
        *,
        enable: Iterable[str] = (),
        disable: Iterable[str] = (),
        domain_id: int | None = None,
    ) -> Graph:
        """Load and validate a graph YAML; ``overrides`` are 'node.param=value' strings or {'node.param': value}."""
        path = Path(path)
        if not path.is_file():
            raise GraphError(f"graph file {path} not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise GraphError(f"{path}: not valid YAML: {err}") from err
        return cls.from_dict(data, path.parent, str(path), overrides, enable, disable, domain_id)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphError(f"unknown node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> Graph:
        if isinstance(overrides, Mapping):
            items = [(*split_override_key(k), v) for k, v in overrides.items()]
        else:
            items = [parse_override(o) for o in overrides]
        nodes = {n.name: n for n in self.nodes}
        for node, param, value in items:
            if node not in nodes:
                raise GraphError(f"override {node}.{param}: unknown node {node!r}; nodes: {', '.join(nodes)}")
            for pname, pvalue in flatten_parameters({param: value}).items():
                check_parameter_value(f"{node}.{pname}", pvalue)
                nodes[node] = replace(nodes[node], parameters={**nodes[node].parameters, pname: pvalue})
        return replace(self, nodes=tuple(nodes[n.name] for n in self.nodes))

    def with_enabled(self, names: Iterable[str], enabled: bool) -> Graph:
        nodes = {n.name: n for n in self.nodes}
        for name in names:
            self.node(name)  # raises with the list of nodes
            nodes[name] = replace(nodes[name], enabled=enabled)
        return replace(self, nodes=tuple(nodes[n.name] for n in self.nodes))

    def active_nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.enabled)

    def process_env(self, node: NodeSpec) -> dict[str, str]:
        """The launcher's environment + graph/node env + ROS_DOMAIN_ID; vla_ros importable from source."""
        env = dict(os.environ)
        env.update(self.env)
        env.update(node.env)
        if self.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(self.domain_id)
        paths = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
        if str(PACKAGE_ROOT) not in paths:
            env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *paths])
        env["PYTHONUNBUFFERED"] = "1"  # output lines reach the prefixer as they are written
        return env


def write_params_file(node: NodeSpec, directory: Path) -> Path | None:
    """Write the node's merged parameters as a ROS 2 parameter file ('/**' section); None if it has none."""
    params = node.merged_parameters()
    if not params:
        return None
    path = directory / f"{node.name}.params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=True))
    return path


# --------------------------------------------------------------------------- running
@dataclass
class _Proc:
    spec: NodeSpec
    params_path: Path | None
    popen: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    returncode: int | None = None
    restarts: int = 0
    respawn_at: float | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=40))


class RunningGraph:
    """The processes of a launched graph. Use as a context manager, or call ``stop()``."""

    def __init__(
        self,
        graph: Graph,
        output: Callable[[str], None] | None = None,
        sigint_timeout: float = 5.0,
        sigterm_timeout: float = 3.0,
    ):
        self.graph = graph
        self.sigint_timeout, self.sigterm_timeout = sigint_timeout, sigterm_timeout
        self._print_lock = threading.Lock()
        self._output = output or self._print
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._done = threading.Event()
        self.failed: tuple[str, int] | None = None  # (node, returncode) of a required node that exited
        self._dir = Path(tempfile.mkdtemp(prefix="vla_launch_"))
        self._procs = {n.name: _Proc(n, write_params_file(n, self._dir)) for n in graph.active_nodes()}
        if not self._procs:
            raise GraphError("no enabled nodes to launch")
        try:
            for proc in self._procs.values():
                self._start(proc)
        except OSError:
            self._stopping.set()
            self._terminate_all()
            raise
        self._monitor = threading.Thread(target=self._watch, name="launcher-monitor", daemon=True)
        self._monitor.start()

    # output ---------------------------------------------------------------
    def _print(self, line: str) -> None:
        with self._print_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def _say(self, text: str) -> None:
        self._output(f"[launcher] {text}")

    def _pump(self, proc: _Proc, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            proc.tail.append(line)
            self._output(f"[{proc.spec.name}] {line}")
        stream.close()

    # lifecycle ------------------------------------------------------------
    def _start(self, proc: _Proc) -> None:
        cmd = proc.spec.command(proc.params_path)
        proc.popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.graph.process_env(proc.spec),
            start_new_session=True,
        )
        proc.returncode, proc.respawn_at = None, None
        proc.reader = threading.Thread(
            target=self._pump, args=(proc, proc.popen.stdout), daemon=True, name=f"output-{proc.spec.name}"
        )
        proc.reader.start()
        self._say(f"started {proc.spec.name} (pid {proc.popen.pid}): {' '.join(cmd)}")

    def _watch(self) -> None:
        while not self._done.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._check_exits()
                if self.failed is not None:
                    return
                self._respawn_due()
                if all(p.returncode is not None and p.respawn_at is None for p in self._procs.values()):
                    self._say("all nodes have exited")
                    self._done.set()
                    return
            time.sleep(0.05)

    def _check_exits(self) -> None:
        for proc in self._procs.values():
            if proc.popen is None or proc.returncode is not None:
                continue
            rc = proc.popen.poll()
            if rc is None:
                continue
            proc.returncode = rc
            spec = proc.spec
            self._say(f"{spec.name} exited with code {rc}")
            if spec.required:
                self.failed = (spec.name, rc)
                self._say(f"required node {spec.name!r} exited with code {rc}: stopping the graph")
                threading.Thread(target=self.stop, daemon=True, name="launcher-stop").start()
                return
            if spec.respawn:
                proc.respawn_at = time.monotonic() + spec.respawn_delay
                self._say(f"respawning {spec.name} in {spec.respawn_delay:.1f} s")

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for proc in self._procs.values():
            if proc.respawn_at is not None and now >= proc.respawn_at:
                proc.restarts += 1
                self._start(proc)

    def _signal_all(self, sig: int, procs: Iterable[_Proc]) -> None:
        for proc in procs:
            try:
                os.killpg(proc.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait_exit(self, procs: list[_Proc], timeout: float) -> list[_Proc]:
        deadline = time.monotonic() + timeout
        alive = procs
        while alive and time.monotonic() < deadline and not self._hurry.is_set():
            time.sleep(0.02)
            alive = [p for p in alive if p.popen.poll() is None]
        return [p for p in alive if p.popen.poll() is None]

    def stop(self) -> dict[str, int | None]:
        """Stop every node: SIGINT to each process group, SIGTERM after ``sigint_timeout``, then SIGKILL."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            for proc in self._procs.values():
                proc.respawn_at = None
        if not first:
            self._done.wait()
            return self.returncodes
        return self._terminate_all()

    def _terminate_all(self) -> dict[str, int | None]:
        alive = [p for p in self._procs.values() if p.popen is not None and p.popen.poll() is None]
        for sig, timeout in ((signal.SIGINT, self.sigint_timeout), (signal.SIGTERM, self.sigterm_timeout)):
            if not alive:
                break
            self._say(f"sending {signal.Signals(sig).name} to {', '.join(p.spec.name for p in alive)}")
            self._signal_all(sig, alive)
            alive = self._wait_exit(alive, timeout)
        dumpable = [p for p in alive if p.spec.module]  # our Python nodes dump their stacks on SIGUSR1
        if dumpable:
            self._say(f"sending SIGUSR1 to {', '.join(p.spec.name for p in dumpable)} (stack dump before SIGKILL)")
            self._signal_all(signal.SIGUSR1, dumpable)
            alive = self._wait_exit(alive, STACK_DUMP_WAIT_S)
        if alive:
            self._say(f"sending SIGKILL to {', '.join(p.spec.name for p in alive)}")
            self._signal_all(signal.SIGKILL, alive)
        for proc in self._procs.values():
            if proc.popen is None:
                continue
            proc.popen.wait()
            self._signal_all(signal.SIGKILL, [proc])  # children a node left behind in its group
            if proc.reader is not None:
                proc.reader.join(timeout=2.0)
            if proc.returncode is None:
                proc.returncode = proc.popen.returncode
                self._say(f"{proc.spec.name} exited with code {proc.returncode}")
        shutil.rmtree(self._dir, ignore_errors=True)
        self._done.set()
        return self.returncodes

    def hurry(self) -> None:
        """Skip the remaining grace periods of a stop in progress (a second Ctrl-C)."""
        self._hurry.set()

    # queries --------------------------------------------------------------
    @property
    def returncodes(self) -> dict[str, int | None]:
        """Last exit status per node; None while it runs. Negative: killed by that signal."""
        return {
            name: p.returncode if p.returncode is not None else (p.popen.poll() if p.popen else None)
            for name, p in self._procs.items()
        }

    @property
    def restarts(self) -> dict[str, int]:
        """How many times each node was respawned."""
        return {name: p.restarts for name, p in self._procs.items()}

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self._procs.items() if p.popen is not None}

    def output_tail(self, name: str) -> list[str]:
        return list(self._procs[name].tail)

    def exit_code(self) -> int:
        """1 if a required node exited with a non-zero status, else 0."""
        return 1 if self.failed is not None and self.failed[1] != 0 else 0

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until all nodes exited or a required node ended the graph; the exit code, None on timeout."""
        if not self._done.wait(timeout):
            return None
        if self.failed is not None:
            self.stop()
        return self.exit_code()

    def _describe_state(self) -> str:
        lines = []
        for name, p in self._procs.items():
            rc = self.returncodes[name]
            state = "running" if rc is None else f"exited with code {rc}"
            tail = "\n    ".join(list(p.tail)[-8:])
            lines.append(f"  {name}: {state}" + (f"\n    {tail}" if tail and rc is not None else ""))
        return "\n".join(lines)

    def wait_ready(self, topics: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until every topic has a publisher (seen by a small rclpy node on the graph's domain).

        Raises RuntimeError as soon as a required node dies, TimeoutError naming the missing topics.
        """
        import rclpy

        context = rclpy.Context()
        domain = self.graph.domain_id
        rclpy.init(context=context, domain_id=domain)
        node = rclpy.create_node(f"launcher_probe_{os.getpid()}", context=context, start_parameter_services=False)
        try:
            deadline = time.monotonic() + timeout
            missing = list(topics)
            while True:
                missing = [t for t in topics if node.count_publishers(t) == 0]
                if not missing:
                    return
                if self.failed is not None or self._stopping.is_set():
                    raise RuntimeError(
                        f"graph stopped while waiting for {', '.join(missing)}:\n{self._describe_state()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no publisher on {', '.join(missing)} after {timeout:.0f} s:\n{self._describe_state()}"
                    )
                time.sleep(0.1)
        finally:
            node.destroy_node()
            context.try_shutdown()

    def __enter__(self) -> RunningGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(
    graph: Graph,
    output: Callable[[str], None] | None = None,
    *,
    sigint_timeout: float = 5.0,
    sigterm_timeout: float = 3.0,
) -> RunningGraph:
    """Start every enabled node of ``graph``; ``output`` receives each prefixed line (default: stdout)."""
    return RunningGraph(graph, output, sigint_timeout=sigint_timeout, sigterm_timeout=sigterm_timeout)


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vla_ros.launcher", description=__doc__.split("\n\n")[0])
    p.add_argument("graph", help="graph YAML (e.g. launch/graphs/sim_lift.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter (YAML-typed value); repeatable",
    )
    p.add_argument("--enable", action="append", default=[], metavar="NODE", help="start a node marked enabled: false")
    p.add_argument("--disable", action="append", default=[], metavar="NODE", help="do not start this node")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for every node")
    p.add_argument("--sigint-timeout", type=float, default=5.0, help="seconds after SIGINT before SIGTERM")
    p.add_argument("--sigterm-timeout", type=float, default=3.0, help="seconds after SIGTERM before SIGKILL")
    p.add_argument("--dry-run", action="store_true", help="validate, print each command and parameters, exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        graph = Graph.from_yaml(
            args.graph, args.set, enable=args.enable, disable=args.disable, domain_id=args.domain_id
        )
    except GraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for node in graph.active_nodes():
            print(f"{node.name}: {' '.join(node.command(Path(f'<{node.name}.params.yaml>')))}")
            for key, value in sorted(node.merged_parameters().items()):
                print(f"    {key}: {value!r}")
        skipped = [n.name for n in graph.nodes if not n.enabled]
        if skipped:
            print(f"disabled (use --enable NAME): {', '.join(skipped)}")
        return 0

    stop_requested = threading.Event()
    running: RunningGraph | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        if stop_requested.is_set() and running is not None:
            running.hurry()
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        running = launch(graph, sigint_timeout=args.sigint_timeout, sigterm_timeout=args.sigterm_timeout)
    except (GraphError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    while not stop_requested.is_set() and running.wait(timeout=0.2) is None:
        pass
    running.stop()
    code = running.exit_code()
    if running.failed is not None and code:
        name, rc = running.failed
        print(f"[launcher] failed: required node {name!r} exited with code {rc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
