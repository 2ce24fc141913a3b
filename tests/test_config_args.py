"""Config dataclasses as flags and files: Literal -> choices, ``--config PATH.json`` with flag
overrides, help on every field, and the policy node's nested config as dotted ROS parameters.

All in-process and fast: nothing here starts a simulator, a training run or a ROS node.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vla.cli.args import add_dataclass_arguments, config_from_args, config_to_json, load_config


@dataclass(frozen=True)
class Inner:
    gain: float = field(default=1.0, metadata={"help": "a gain"})
    names: tuple[str, ...] = field(default=("a",), metadata={"help": "names"})
    root: Path | None = field(default=None, metadata={"help": "a directory"})


@dataclass
class Outer:
    mode: Literal["fast", "safe"] = field(default="safe", metadata={"help": "how to run"})
    modes: tuple[Literal["x", "y", "z"], ...] = field(default=("x",), metadata={"help": "several modes"})
    steps: int = field(default=10, metadata={"help": "steps"})
    out: Path = field(default=Path("runs/a"), metadata={"help": "run directory"})
    verbose: bool = field(default=False, metadata={"help": "say more"})
    shapes: dict[str, list[int]] = field(default_factory=dict, metadata={"help": "feature shapes"})
    inner: Inner = field(default_factory=lambda: Inner(gain=0.5), metadata={"help": "the inner part"})


def parser_for(config_cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_dataclass_arguments(parser, config_cls)
    return parser


def build(config_cls: type, argv: list[str]):
    return config_from_args(config_cls, parser_for(config_cls).parse_args(argv))


# --------------------------------------------------------------------------- Literal -> choices
def test_flags_without_config_give_the_dataclass_defaults():
    assert build(Outer, []) == Outer()
    assert build(Outer, []).inner.gain == 0.5  # a default_factory's own values are kept


def test_literal_becomes_choices_and_a_bad_value_is_argparses_error(capsys):
    assert build(Outer, ["--mode", "fast"]).mode == "fast"
    with pytest.raises(SystemExit) as exit_info:
        build(Outer, ["--mode", "reckless"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --mode: invalid choice: 'reckless'" in err and "'fast'" in err and "'safe'" in err


def test_tuple_of_literals_takes_several_values_from_the_choices(capsys):
    assert build(Outer, ["--modes", "y", "z"]).modes == ("y", "z")
    with pytest.raises(SystemExit):
        build(Outer, ["--modes", "y", "w"])
    assert "invalid choice: 'w'" in capsys.readouterr().err


def test_eval_vectorization_is_a_choice(capsys):
    from vla.evaluation.evaluate import EvalConfig

    hint = typing.get_type_hints(EvalConfig)["vectorization"]
    assert typing.get_args(hint) == ("auto", "sync", "subprocess", "gpu")
    assert build(EvalConfig, ["--vectorization", "sync"]).vectorization == "sync"
    with pytest.raises(SystemExit):
        build(EvalConfig, ["--vectorization", "threads"])
    assert "invalid choice: 'threads'" in capsys.readouterr().err


def test_help_shows_meaning_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parser_for(Outer).parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "how to run (default: safe)" in out and "{fast,safe}" in out
    assert "--inner.gain" in out and "--config PATH.json" in out


# --------------------------------------------------------------------------- --config
def test_config_round_trip_with_a_flag_overriding_the_file(tmp_path):
    saved = Outer(
        mode="fast",
        modes=("y", "z"),
        steps=99,
        out=Path("runs/b"),
        verbose=True,
        shapes={"state": [8]},
        inner=Inner(gain=2.0, names=("p", "q"), root=Path("/data")),
    )
    path = tmp_path / "config.json"
    path.write_text(config_to_json(saved))
    config = build(Outer, ["--config", str(path), "--steps", "7", "--inner.gain", "3.0"])
    assert config.steps == 7 and config.inner.gain == 3.0  # the flags won
    assert config == dataclasses.replace(saved, steps=7, inner=dataclasses.replace(saved.inner, gain=3.0))
    assert isinstance(config.out, Path) and isinstance(config.inner.root, Path) and config.modes == ("y", "z")
    assert load_config(Outer, path) == saved


def test_a_flag_equal_to_the_default_still_overrides_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"steps": 99, "verbose": True}))
    config = build(Outer, ["--config", str(path), "--steps", "10", "--no-verbose"])
    assert config.steps == 10 and config.verbose is False


def test_nested_dataclass_from_json_keeps_unset_fields_at_their_defaults(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"inner": {"names": ["m", "n"], "root": "/x"}}))
    config = build(Outer, ["--config", str(path)])
    assert config.inner == Inner(gain=0.5, names=("m", "n"), root=Path("/x"))  # gain: the factory's default
    assert config.steps == 10 and config.mode == "safe"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stepz": 3}, "unknown key(s) 'stepz' for Outer; known keys: mode, modes, steps, out, verbose, shapes, inner"),
        ({"inner": {"gian": 1.0}}, "unknown key(s) 'inner.gian' for Inner; known keys: gain, names, root"),
        ({"steps": "ten"}, "steps: expected an integer, got 'ten'"),
        ({"mode": "reckless"}, "mode: expected one of 'fast', 'safe', got 'reckless'"),
        ({"inner": 3}, "inner: expected a JSON object of Inner fields"),
    ],
)
def test_bad_config_files_are_refused_by_name(tmp_path, data, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        build(Outer, ["--config", str(path)])
    assert message in str(err.value) and str(path) in str(err.value)


def test_train_config_json_as_vla_train_writes_it_loads_back(tmp_path):
    from vla.policies.config import PolicyConfig
    from vla.training.trainer import TrainConfig

    policy = PolicyConfig(
        image_features=("observation.images.scene",),
        head="flow_matching",
        meanflow_clamp=1.0,
        feature_shapes={"observation.state": [9], "observation.images.scene": [64, 64, 3]},
        action_dim=7,
    )
    run = TrainConfig(dataset=Path("data/datasets/lift"), out=tmp_path / "run", policy=policy, steps=123, lr=1e-3)
    path = tmp_path / "config.json"
    # exactly what vla.training.trainer.train writes into <out>/config.json
    path.write_text(json.dumps(dataclasses.asdict(run), indent=2, default=str))
    config = build(TrainConfig, ["--config", str(path), "--out", str(tmp_path / "run2"), "--policy.chunk-size", "16"])
    assert config.out == tmp_path / "run2" and config.policy.chunk_size == 16
    assert config == dataclasses.replace(run, out=tmp_path / "run2", policy=dataclasses.replace(policy, chunk_size=16))


def test_vla_main_refuses_an_unknown_key_with_exit_code_2(tmp_path, caplog):
    from vla.cli.main import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"episodes": 5, "num_env": 2}))
    assert main(["eval", "--config", str(path)]) == 2
    assert "unknown key(s) 'num_env' for EvalConfig; known keys:" in caplog.text and "num_envs" in caplog.text


# --------------------------------------------------------------------------- help on every field
def _fields_without_help(config_cls: type, prefix: str = "") -> list[str]:
    from vla.policies.config import PolicyConfig  # another engineer's; its fields are checked there

    missing = []
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("help"):
            missing.append(f"{prefix}{f.name}")
        tp = hints[f.name]
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) else tp
        if dataclasses.is_dataclass(tp) and tp is not PolicyConfig:
            missing += _fields_without_help(tp, f"{prefix}{f.name}.")
    return missing


def _cli_config_classes() -> dict[str, type]:
    from vla.cli.main import config_classes

    return config_classes()


def test_every_verb_with_flags_has_a_config_class():
    assert {
        "collect",
        "train",
        "eval",
        "serve",
        "demo",
        "bench sim",
        "bench experts",
        "bench policy",
        "bench train",
    } <= set(_cli_config_classes())


@pytest.mark.parametrize(
    "command",
    ["collect", "train", "eval", "serve", "demo", "bench sim", "bench experts", "bench policy", "bench train"],
)
def test_every_cli_config_field_has_help(command):
    config_cls = _cli_config_classes()[command]
    missing = _fields_without_help(config_cls)
    assert not missing, (
        f"`vla {command}` ({config_cls.__module__}.{config_cls.__name__}): no metadata help for {missing}"
    )


# --------------------------------------------------------------------------- policy node: dotted parameters
def test_policy_node_config_from_dotted_parameters_equals_the_nested_dataclass():
    from hardware.safety import SafetyConfig
    from vla_ros.policy_node import PolicyNodeConfig
    from vla_ros.ros_util import config_from_parameters

    params = {
        "server_host": "gpu-box",
        "robot": "panda",
        "control_hz": 10.0,
        "safety.max_step_rad": 0.03,
        "safety.workspace_min": (0.25, -0.45, 0.03),
        "safety.stale_image_s": 0.2,
    }
    expected = PolicyNodeConfig(
        server_host="gpu-box",
        robot="panda",
        control_hz=10.0,
        safety=SafetyConfig(max_step_rad=0.03, workspace_min=(0.25, -0.45, 0.03), stale_image_s=0.2),
    )
    assert config_from_parameters(PolicyNodeConfig, params) == expected  # what ros_util.declare_config returns
    # the node's robot and control rate are the safety layer's
    assert expected.safety.robot == "panda" and expected.safety.control_dt == pytest.approx(0.1)


def test_policy_node_parameters_are_the_flat_fields_and_dotted_safety_fields():
    from hardware.safety import SafetyConfig
    from vla_ros.policy_node import NODE_SET_PARAMETERS, PolicyNodeConfig
    from vla_ros.ros_util import parameter_fields

    leaves = parameter_fields(PolicyNodeConfig, NODE_SET_PARAMETERS)  # what ros_util.declare_config declares
    names = set(leaves)
    safety = {f"safety.{f.name}" for f in dataclasses.fields(SafetyConfig)}
    flat = {f.name for f in dataclasses.fields(PolicyNodeConfig)} - {"safety"}
    assert names == flat | (safety - set(NODE_SET_PARAMETERS))
    assert {"robot", "safety.max_step_rad", "safety.workspace_min"} <= names
    assert not names & {"max_step_rad", "workspace_min", "safety.robot", "safety.control_dt", "safety.cameras"}
    defaults = {name: leaf.default for name, (leaf, _) in leaves.items()}
    assert defaults["safety.max_step_rad"] == SafetyConfig().max_step_rad and defaults["ee_delta_gain"] == 0.25
    hints = {name: tp for name, (_, tp) in leaves.items()}
    assert hints["safety.velocity_scale"] is float and typing.get_args(hints["command_interface"]) == (
        "topic",
        "action",
    )


def test_policy_node_refuses_a_choice_outside_its_literal():
    from vla_ros.policy_node import PolicyNodeConfig

    with pytest.raises(ValueError, match="unknown command_interface 'service'; available: topic, action"):
        PolicyNodeConfig(server_host="h", command_interface="service")  # type: ignore[arg-type]
