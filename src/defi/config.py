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
from typing import Any, ClassVar, TypeVar

from defi.errors import ConfigError

C = TypeVar("C")


class Config:
    """Mixin for config dataclasses: override `validate` and call `self.check(...)` for value constraints.

    Presets (one scheme for every config): named constructors registered with `@preset(Cls, "name")` and built
    with `Cls.preset("name")`. By convention `tiny` is for tests, `small` the CPU default and `paper` the
    published sizes; `default_preset` is what a command starts from when no `--preset` is given.
    """

    _presets: ClassVar[dict[str, Callable[[], Any]]] = {}
    default_preset: ClassVar[str] = "small"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._presets = {}  # each config class has its own presets (a subclass does not inherit its parent's)

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        presets = cls._presets  # type: ignore[attr-defined]
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r} for {cls.__name__} (valid presets: "
                              f"{', '.join(presets) or 'none'})")
        return presets[name]()

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(cls._presets)

    def validate(self) -> None:  # pragma: no cover - default has nothing to check
        pass

    def check(self, condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ConfigError(f"{key}={getattr(self, key, '?')!r}: expected {expected}")


def preset(cls: type[C], name: str) -> Callable[[Callable[[], C]], Callable[[], C]]:
    """Register the decorated function as preset `name` of config class `cls`."""

    def register(fn: Callable[[], C]) -> Callable[[], C]:
        cls._presets[name] = fn  # type: ignore[attr-defined]
        return fn

    return register


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
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # per process: concurrent writers never share it
    kind = getattr(cfg, "type_name", None) or type(cfg).__name__
    tmp.write_text(json.dumps({"_type": kind, **to_dict(cfg)}, indent=2) + "\n")
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


def parse_cli(cls: type[C], argv: Sequence[str], prog: str, description: str | None = None) -> C:
    """Build a config from `--preset NAME`, then `--config FILE.json`, then field overrides, all parsed by tyro.

    Example: `defi finetune --preset small --config my.json --trainer.max-steps 500 --trainer.lr 3e-4`. The first
    pass reads only `--preset` / `--config` (unknown flags are kept for the second), so that the second pass can
    show and override the chosen preset's values.
    """
    import tyro

    presets = cls.preset_names()
    default = cls.default_preset if cls.default_preset in presets else None

    @dataclasses.dataclass
    class Base:
        preset: typing.Optional[str] = default  # noqa: UP045 - tyro reads the annotation at run time
        config: typing.Optional[Path] = None  # noqa: UP045

    argv = list(argv)
    asks_help = any(a in ("-h", "--help") for a in argv)
    base, rest = tyro.cli(Base, args=[a for a in argv if a not in ("-h", "--help")], return_unknown_args=True,
                          add_help=False, prog=prog)
    if asks_help:
        rest = [*rest, "--help"]
    if base.preset is not None and base.preset not in presets:
        raise ConfigError(f"unknown preset {base.preset!r} (valid presets: {', '.join(presets) or 'none'})")
    start = cls.preset(base.preset) if base.preset is not None else None
    if base.config is not None:
        start = load_config(cls, base.config, base=start)
    desc = description or ""
    if presets:
        desc += f"\n\nBase config: --preset {{{','.join(presets)}}}" + (f" (default {default})" if default else "") + \
            ", then --config FILE.json, then the flags below."
    if start is None:  # no preset: the class's own defaults (and its required positional arguments)
        cfg = tyro.cli(cls, args=rest, prog=prog, description=desc)
    else:
        cfg = tyro.cli(cls, default=start, args=rest, prog=prog, description=desc)
    validate_config(cfg)
    return cfg
