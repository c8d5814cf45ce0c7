"""Frozen-dataclass configs from JSON-like dicts, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ctmwa_training.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build the frozen dataclass `cls` from `data`; unknown keys and wrong types are a `ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} key(s) {unknown}; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = None if fields[name].default is dataclasses.MISSING else fields[name].default
        # JSON has no tuples; ints may stand for floats, never the other way round.
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wrong_bool = isinstance(value, bool) != isinstance(default, bool)  # bool is an int to isinstance
        if default is not None and (wrong_bool or not isinstance(value, type(default))):
            raise ConfigError(
                f"{where}: {cls.__name__}.{name} = {value!r} has type {type(value).__name__}; "
                f"expected {type(default).__name__} like the default {default!r}"
            )
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid {cls.__name__}: {e}") from e
