"""Typed config dataclasses -> argparse options, so every verb's flags come from its config.

A field's help text is its ``metadata["help"]``; ``--foo-bar`` sets ``foo_bar``. Booleans get
``--flag/--no-flag``; tuples take several values; a ``Literal[...]`` field (or a tuple of one)
only accepts its values (argparse ``choices``). Nested dataclasses become dotted flags.

Every parser also gets ``--config PATH.json``: a saved config (e.g. the ``config.json`` that
``vla train`` writes into its run directory) is loaded into the dataclass, and flags given on
the command line override its values. So a config is, field by field: the dataclass default,
then the JSON file's value, then the flag's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

CONFIG_FLAG = "--config"
CONFIG_DEST = "config_file"  # not "config": a config dataclass may well have a field called that


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of ``Literal[...]`` (None for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _dataclass_type(tp: Any) -> type | None:
    """``tp`` if it is a dataclass (the class, not an instance), else None."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type, prefix: str = "") -> None:
    """One flag per field (nested dataclass fields become dotted flags: ``--policy.head meanflow``),
    plus ``--config PATH.json`` on the top level.

    Flags default to "not given" (``argparse.SUPPRESS``), so ``config_from_args`` can tell a
    flag typed on the command line (which overrides ``--config``) from a default (which does
    not); the help text shows the dataclass default.
    """
    if not prefix:
        parser.add_argument(
            CONFIG_FLAG,
            dest=CONFIG_DEST,
            type=Path,
            default=None,
            metavar="PATH.json",
            help=f"start from this saved {config_cls.__name__} (JSON, e.g. a run's config.json); "
            "flags given on the command line override its values",
        )
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        tp, _ = _unwrap_optional(hints[field.name])
        nested = _dataclass_type(tp)
        if nested is not None:
            add_dataclass_arguments(parser, nested, prefix=f"{prefix}{field.name}.")
            continue
        dest = prefix + field.name
        flag = "--" + prefix + field.name.replace("_", "-")
        default = _field_default(field)
        help_text = field.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})".strip().replace("%", "%%")  # argparse formats help with %
        common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        choices = literal_choices(tp)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif choices is not None:
            parser.add_argument(flag, type=type(choices[0]), choices=choices, **common)
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            item_choices = literal_choices(item)
            if item_choices is not None:
                parser.add_argument(flag, nargs="+", type=type(item_choices[0]), choices=item_choices, **common)
            else:
                parser.add_argument(flag, nargs="+", type=Path if item is Path else item, **common)
        elif typing.get_origin(tp) is dict:
            parser.add_argument(flag, type=json.loads, **{**common, "help": help_text + " (JSON)"})
        else:
            parser.add_argument(flag, type=tp, **common)


def config_from_args(
    config_cls: type, args: argparse.Namespace, prefix: str = "", base: Mapping[str, Any] | None = None
):
    """The config a verb runs with: dataclass defaults < ``base`` (e.g. a recipe) < ``--config`` JSON
    < flags given on the command line."""
    path = getattr(args, CONFIG_DEST, None) if not prefix else None
    data = load_json_object(path) if path else {}
    if base:
        data = deep_merge(base, data)
    overrides = _overrides(config_cls, data, args, prefix, source=str(path) if path else "config")
    return config_cls(**overrides)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s values on top; nested objects are merged key by key, not replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(config_cls: type, data: Mapping[str, Any], source: str = "config"):
    """A config dataclass from a JSON-like dict: nested dicts -> nested dataclasses, lists ->
    tuples, strings -> Path where the field is typed so; unknown keys are refused."""
    return config_cls(**_overrides(config_cls, data, None, "", source))


def load_config(config_cls: type, path: str | Path):
    """A config dataclass from a JSON file such as a run's ``config.json``."""
    return config_from_dict(config_cls, load_json_object(path), source=str(path))


def config_to_json(config: Any) -> str:
    """The JSON that ``--config`` reads back (Paths as strings, tuples as lists)."""
    return json.dumps(dataclasses.asdict(config), indent=2, default=str)


def load_json_object(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{CONFIG_FLAG} {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{CONFIG_FLAG} {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_FLAG} {path}: expected a JSON object of config fields, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- JSON -> dataclass
def _overrides(
    cls: type, data: Mapping[str, Any], args: argparse.Namespace | None, prefix: str, source: str
) -> dict[str, Any]:
    """The fields of ``cls`` that ``data`` (JSON) or explicitly given flags set, as constructor arguments."""
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(repr(prefix + k) for k in unknown)} for "
            f"{cls.__name__}; known keys: {', '.join(known)}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in fields:
        name = prefix + field.name
        tp, optional = _unwrap_optional(hints[field.name])
        nested_cls = _dataclass_type(tp)
        if nested_cls is not None:
            sub = data.get(field.name, dataclasses.MISSING)
            if sub is None and optional:
                values[field.name] = None
                continue
            if sub is not dataclasses.MISSING and not isinstance(sub, Mapping):
                raise ValueError(
                    f"{source}: {name}: expected a JSON object of {nested_cls.__name__} fields, got {sub!r}"
                )
            nested = _overrides(nested_cls, sub if isinstance(sub, Mapping) else {}, args, name + ".", source)
            if nested or sub is not dataclasses.MISSING:
                values[field.name] = _with_overrides(nested_cls, _field_default(field), nested)
        elif args is not None and hasattr(args, name):  # typed on the command line: it wins
            value = getattr(args, name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
        elif field.name in data:
            values[field.name] = _convert(hints[field.name], data[field.name], name, source)
    return values


def _with_overrides(cls: type, default: Any, overrides: dict[str, Any]):
    """The field's default instance with ``overrides`` applied (a factory's own values are kept)."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.replace(default, **overrides)
    return cls(**overrides)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, name: str, source: str) -> Any:
    """A JSON value as the field type ``tp`` asks for; a mismatch is a ValueError naming the field."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"{source}: {name}: expected {expected}, got {value!r}")

    if tp is Any or tp is object:
        return value
    origin, type_args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in type_args:
            return None
        for arm in (a for a in type_args if a is not type(None)):
            try:
                return _convert(arm, value, name, source)
            except ValueError:
                continue
        raise bad(_type_name(tp))
    if value is None:
        raise bad(_type_name(tp))
    if origin is Literal:
        if value not in type_args:
            raise bad(f"one of {', '.join(map(repr, type_args))}")
        return value
    nested_cls = _dataclass_type(tp)
    if nested_cls is not None:
        if not isinstance(value, Mapping):
            raise bad(f"a JSON object of {nested_cls.__name__} fields")
        return nested_cls(**_overrides(nested_cls, value, None, name + ".", source))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        if len(type_args) == 2 and type_args[1] is Ellipsis:
            items = [type_args[0]] * len(value)
        elif type_args:
            if len(type_args) != len(value):
                raise bad(f"{len(type_args)} values ({_type_name(tp)})")
            items = list(type_args)
        else:
            items = [Any] * len(value)
        return tuple(_convert(t, v, f"{name}[{i}]", source) for i, (t, v) in enumerate(zip(items, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        item = type_args[0] if type_args else Any
        return [_convert(item, v, f"{name}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad(f"a JSON object ({_type_name(tp)})")
        key_tp, value_tp = type_args if type_args else (Any, Any)
        return {
            _convert(key_tp, k, name, source): _convert(value_tp, v, f"{name}[{k!r}]", source) for k, v in value.items()
        }
    if tp is Path:
        if not isinstance(value, str):
            raise bad("a path (string)")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value
