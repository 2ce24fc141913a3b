"""Typed config dataclasses -> argparse options, so every verb's flags come from its config.

A field's help text is its ``metadata["help"]``; ``--foo-bar`` sets ``foo_bar``. Booleans get
``--flag/--no-flag``; tuples take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type, prefix: str = "") -> None:
    """Nested dataclass fields become dotted flags: ``--policy.head meanflow``."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        tp, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(parser, tp, prefix=f"{prefix}{field.name}.")
            continue
        dest = prefix + field.name
        flag = "--" + prefix + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = field.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})".strip()
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            parser.add_argument(flag, dest=dest, nargs="+", type=item, default=default, help=help_text)
        elif typing.get_origin(tp) is dict:
            parser.add_argument(flag, dest=dest, type=json.loads, default=default, help=help_text + " (JSON)")
        else:
            converter = Path if tp is Path else tp
            parser.add_argument(flag, dest=dest, type=converter, default=default, help=help_text)


def config_from_args(config_cls: type, args: argparse.Namespace, prefix: str = ""):
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        tp, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(tp):
            values[field.name] = config_from_args(tp, args, prefix=f"{prefix}{field.name}.")
            continue
        value = getattr(args, prefix + field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_cls(**values)


def config_to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, default=str)
