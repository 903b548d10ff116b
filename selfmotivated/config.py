"""Config dataclasses <-> command line flags and YAML files.

Each stage has one config dataclass; its fields (with `metadata={"help": ...}`) are the single source of truth
for flags, YAML keys and defaults. Flags given on the command line override a `--config` YAML file, which
overrides the dataclass defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

MISSING = object()  # marks a flag that was not given
_MISSING = MISSING


def _base_type(tp) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of an annotation like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_key_values(items) -> dict:
    """{"KEY": value} from "KEY=VALUE" strings (a list, or one string joined by commas); each value is read as
    a YAML scalar, so "2" is 2, "true" is True and "[1, 2]" a list. ValueError names a malformed item."""
    import yaml

    parts = items.split(",") if isinstance(items, str) else list(items)
    values = {}
    for part in parts:
        key, sep, text = str(part).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part!r} is not KEY=VALUE")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = text.strip()
    return values


class KeyValues(argparse.Action):
    """A dict-valued field's flag: KEY=VALUE pairs, the flag repeatable; later pairs win."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, _MISSING)
        try:
            given = parse_key_values(values)
        except ValueError as err:
            parser.error(f"{option_string}: {err}")
        setattr(namespace, self.dest, {**(current if isinstance(current, dict) else {}), **given})


def add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass `cls`. Defaults are not set here (so we can tell which flags
    were given): `config_from_args` fills them from the YAML file and the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        if tp is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=_MISSING, help=help_text)
        elif typing.get_origin(tp) in (tuple, list):
            inner = (typing.get_args(tp) or (str,))[0]
            parser.add_argument(_flag(f.name), dest=f.name, nargs="*", type=inner, default=_MISSING,
                                help=help_text)
        elif tp is dict:
            parser.add_argument(_flag(f.name), *f.metadata.get("aliases", ()), dest=f.name, nargs="+",
                                action=KeyValues, metavar="KEY=VALUE", default=_MISSING, help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=tp if tp in (int, float) else str,
                                default=_MISSING, help=help_text, choices=f.metadata.get("choices"))


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def build_config(cls, values: dict, source: str = "config"):
    """Instantiate `cls` from a dict, with a clear error naming an unknown key and the allowed ones."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        tp, optional = _base_type(hints[key])
        if value is None:
            if not optional:
                raise ValueError(f"{source}: key {key!r} may not be empty")
            clean[key] = None
            continue
        try:
            if tp is bool and not isinstance(value, bool):
                raise TypeError
            if typing.get_origin(tp) in (tuple, list):
                value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            elif tp in (int, float) and not isinstance(value, bool):
                value = tp(value)
            elif tp is str:
                value = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: key {key!r} must be {getattr(tp, '__name__', tp)}, got {value!r}") from None
        clean[key] = value
    try:
        return cls(**clean)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def config_from_args(cls, args: argparse.Namespace, yaml_values: dict | None = None, source: str = "config"):
    """Dataclass defaults, updated by YAML values, updated by the flags actually given."""
    values = dict(yaml_values or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, _MISSING)
        if given is not _MISSING:
            # A mapping's flags add to (and override keys of) the YAML file's mapping.
            before = values.get(f.name)
            merge = isinstance(given, dict) and isinstance(before, dict)
            values[f.name] = {**before, **given} if merge else given
    return build_config(cls, values, source)


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)
