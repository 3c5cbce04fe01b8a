"""Configuration: frozen dataclasses per component, loaded from YAML with ``key=value`` overrides.

Unknown keys and wrong types fail with a :class:`ConfigError` naming the key, so that a typo in a
lab's config never silently falls back to a default.

    cfg = load_config(SampleConfig, "configs/sample.yaml", overrides=["grid.rows=4"])
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from stainldm.errors import ConfigError
from stainldm.files import atomic_write_text

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Builds the dataclass ``cls`` from a plain mapping, checking keys and types recursively.

    Args:
        cls: a (frozen) dataclass type whose fields have type hints.
        data: the mapping, e.g. parsed YAML; missing keys take the dataclass defaults.
        where: dotted prefix used in error messages (``"train.optim"``).

    Raises:
        ConfigError: on an unknown key (with a close match suggested), a removed key (a class may list
            them, with what replaced each, in a ``REMOVED_KEYS`` class variable) or a value of the wrong type.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    removed = getattr(cls, "REMOVED_KEYS", {})  # old keys a config may still hold: say what replaced them
    for key in data:
        if key in removed and key not in fields:
            raise ConfigError(f"config key '{_join(where, str(key))}' was removed: {removed[key]}")
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean '{_join(where, close[0])}'?" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"unknown config key '{_join(where, str(key))}'{hint}")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(value, hints[name], _join(where, name))
    try:
        return cls(**values)
    except TypeError as exc:  # a required field without default is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (tuples become lists), ready for YAML/JSON."""
    return _plain(dataclasses.asdict(cfg))


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config, written into outputs' provenance."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``key.sub=value`` strings to a nested mapping; values are parsed as YAML scalars.

    Args:
        data: the mapping (not changed: the result is a copy where it differs).
        overrides: ``key.sub=value`` strings (the CLI's ``--set``).

    Raises:
        ConfigError: when an override has no ``=``, a value is not YAML or a key walks through a
            non-mapping; the message names ``overrides`` and the item.
    """
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`overrides` '{item}': expected key=value, e.g. grid.rows=4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"`overrides` '{item}': value is not valid YAML ({exc.problem})") from exc
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"`overrides` '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, with one-line errors for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, *, overrides: Sequence[str] = (), section: str | None = None
) -> T:
    """Loads ``cls`` from an optional YAML file (or one top-level ``section`` of it) plus overrides."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    if section is not None:
        data = data.get(section) or {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where=section or "")


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks ``value`` against the type hint ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} fits none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    return value
