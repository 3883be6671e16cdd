"""Typed dataclass configs: strict (de)serialisation, validation, presets and CLI overrides.

Every stage has one dataclass config built from nested dataclasses. Presets are named constructors
(`tiny` for tests, `small` for the CPU default, `paper` for the published sizes). A config is validated when it
is built from a dict or a CLI: an unknown key, a wrong type or an impossible value raises `ConfigError` naming
the dotted key. The resolved config is written as JSON into every run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from defi.errors import ConfigError

C = TypeVar("C")


class Config:
    """Mixin for config dataclasses: override `validate` and call `self.check(...)` for value constraints."""

    def validate(self) -> None:  # pragma: no cover - default has nothing to check
        pass

    def check(self, condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ConfigError(f"{key}={getattr(self, key, '?')!r}: expected {expected}")


def validate_config(cfg: Any, prefix: str = "") -> None:
    """Run `validate()` on a config and every nested config, prefixing errors with the dotted path."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{prefix}{field.name}.")
    if isinstance(cfg, Config):
        try:
            cfg.validate()
        except ConfigError as err:
            raise ConfigError(f"config key {prefix}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths become strings, tuples lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert JSON forms (lists -> tuples, str -> Path)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: got {value!r}, expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key}: got {value!r}, expected null")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key}: got {value!r}, expected one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: got {value!r}, expected a mapping for {tp.__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: got {value!r}, expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key}: got {len(value)} items, expected {len(args)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: got {value!r}, expected a mapping")
        val_tp = args[1] if args else Any
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"config key {key}: got {value!r}, expected a path")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {key}: got {value!r}, expected a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key}: got {value!r}, expected an integer")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key}: got {value!r}, expected true or false")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key}: got {value!r}, expected a string")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key}: got {value!r}, expected {_type_name(tp)}")


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "", base: C | None = None) -> C:
    """Build `cls` from a (possibly partial) dict; missing keys keep `base`'s (or the class default) values."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (valid keys of {prefix or cls.__name__}: {', '.join(sorted(names))})"
        )
    base = base if base is not None else cls()
    kwargs = {}
    for field in dataclasses.fields(cls):
        current = getattr(base, field.name)
        if field.name not in data:
            kwargs[field.name] = current
            continue
        value = data[field.name]
        tp = hints[field.name]
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[field.name] = from_dict(type(current), value, prefix=f"{prefix}{field.name}.", base=current)
        else:
            kwargs[field.name] = _coerce(value, tp, f"{prefix}{field.name}")
    cfg = cls(**kwargs)
    if not prefix:
        validate_config(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the config as JSON atomically (write a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"_type": type(cfg).__name__, **to_dict(cfg)}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_config(cls: type[C], path: str | Path, base: C | None = None) -> C:
    """Read a JSON config written by `save_config` (or a partial one by hand) over `base`, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict):
        data.pop("_type", None)
    try:
        return from_dict(cls, data, base=base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def replace(cfg: C, **changes: Any) -> C:
    """`dataclasses.replace` that re-validates the result."""
    new = dataclasses.replace(cfg, **changes)
    validate_config(new)
    return new


def parse_cli(
    cls: type[C],
    argv: Sequence[str],
    presets: dict[str, Callable[[], C]],
    prog: str,
    description: str | None = None,
    default_preset: str = "small",
) -> C:
    """Build a config from `--preset NAME`, then `--config FILE.json`, then field overrides (tyro flags).

    Example: `defi finetune --preset small --trainer.max-steps 500 --trainer.lr 3e-4`.
    """
    import tyro

    argv = list(argv)
    preset = default_preset
    config_file = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        for flag in ("--preset", "--config"):
            if arg == flag or arg.startswith(flag + "="):
                if "=" in arg:
                    value = arg.split("=", 1)[1]
                else:
                    if i + 1 >= len(argv):
                        raise ConfigError(f"{flag} needs a value")
                    i += 1
                    value = argv[i]
                if flag == "--preset":
                    preset = value
                else:
                    config_file = value
                break
        else:
            rest.append(arg)
        i += 1
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} (valid presets: {', '.join(presets)})")
    base = presets[preset]()
    if config_file is not None:
        base = load_config(cls, config_file, base=base)
    desc = (description or "") + f"\n\nBase config: --preset {{{','.join(presets)}}} (default {default_preset}), " \
        "then --config FILE.json, then the flags below."
    cfg = tyro.cli(cls, default=base, args=rest, prog=prog, description=desc)
    validate_config(cfg)
    return cfg

