"""A ``RunConfig`` from YAML, a dict or ``section.key=value`` overrides, and back to a dict. Unknown keys are an error,
not a warning: a typo in a month-long run's config must fail at start, not silently use a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from peer.config.peer_settings import MOVED_TO_PEER, PEER_TRAIN_KEYS
from peer.config.specs import ConfigError, RunConfig, TrainSpec
from peer.config.stages import model_stages


def peer_train_overrides(items: list[str]) -> dict[str, Any]:
    """The ``--set train.KEY=VALUE`` items of a peer that joins through a coordinator, checked and typed; any other
    key is refused in one line, because a coordinator's run config must be the same for every peer."""
    hints = typing.get_type_hints(TrainSpec)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        section, _, name = key.partition(".")
        if not sep or section != "train" or name not in PEER_TRAIN_KEYS:
            allowed = ", ".join(f"train.{k}" for k in PEER_TRAIN_KEYS)
            raise ConfigError(
                f"--set {key}: a coordinator's run config is the same for every peer; with --coordinator only this "
                f"peer's own settings may be set ({allowed})"
            )
        if name == "batch_size" and raw.strip() == "auto":
            values[name] = "auto"
            continue
        values[name] = _coerce(yaml.safe_load(raw) if raw.strip() else raw, hints[name], key)
    return values


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks and converts one YAML value to the annotated type; raises ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    prefix = f"{where}." if where else ""
    for key in unknown:
        if f"{prefix}{key}" in MOVED_TO_PEER:
            raise ConfigError(
                f"{prefix}{key} is no longer part of the run config (each peer's own setting, PeerSettings): "
                f"give it on the command line as {MOVED_TO_PEER[prefix + key]}"
            )
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if required:
        raise ConfigError(f"missing config key {prefix}{required[0]}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """The run config ``data`` describes, checked: types, unknown keys and the growth schedule (``model_stages``).
    A coordinator's published config goes through here too, so a malformed schedule is refused by every peer."""
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a YAML mapping")
    cfg = _from_dict(RunConfig, data)
    model_stages(cfg)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML run config (None = all defaults) and applies ``section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else raw
    return config_from_dict(data)
