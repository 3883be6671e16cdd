"""`save_pretrained` / `from_pretrained` for defi's own models.

A model class sets `config_class` (a dataclass config) and takes the config as its only constructor argument.
A saved model is a directory with `config.json` (the validated dataclass) and `model.safetensors`. A model made of
parts lists them in `components`: each is saved in its own subfolder (`gfdm/`, `gidm/`, `adapter/`, ...) that its
own class loads with `from_pretrained`, as diffusers saves a pipeline one folder per component; the parent's
`model.safetensors` then holds only its remaining weights. We keep this small mixin instead of
`PyTorchModelHubMixin` because our configs are nested dataclasses that must be validated (unknown key, wrong type)
when read back, which that mixin does not do.

Writes are atomic and safe when several processes save at once: each writer fills its own temporary sibling
directory (named after its pid and a random suffix), then renames it into place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from defi.config import load_config, save_config
from defi.errors import CheckpointError

M = TypeVar("M", bound="PretrainedMixin")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _unique_sibling(directory: Path, tag: str) -> Path:
    return directory.with_name(f".{directory.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_directory(tmp: Path, directory: Path, attempts: int = 20) -> None:
    """Move the finished `tmp` to `directory`, replacing what is there (another writer may be doing the same)."""
    for _ in range(attempts):
        old = _unique_sibling(directory, "old")
        try:
            if directory.exists():
                os.replace(directory, old)
            os.replace(tmp, directory)
        except OSError:
            continue  # another writer moved a directory in between: try again
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    raise CheckpointError(f"{directory}: could not be replaced after {attempts} attempts (concurrent writers?)")


class PretrainedMixin:
    config_class: ClassVar[type]
    components: ClassVar[tuple[str, ...]] = ()
    config: Any

    def _own_state(self) -> dict[str, torch.Tensor]:
        assert isinstance(self, torch.nn.Module)
        prefixes = tuple(f"{name}." for name in self.components)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def _write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / CONFIG_NAME)
        for name in self.components:
            getattr(self, name)._write(directory / name)
        save_file({k: v.detach().contiguous() for k, v in self._own_state().items()}, str(directory / WEIGHTS_NAME))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config and weights (and each component's subfolder) into `directory` atomically."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = _unique_sibling(directory, "tmp")
        try:
            self._write(tmp)
            replace_directory(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    def _read_weights(self, directory: Path, map_location: str | torch.device) -> None:
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{weights}: cannot read weights ({err})") from None
        own = self._own_state()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise CheckpointError(f"{weights}: weights do not match {type(self).__name__} (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}, other shapes {wrong[:5]})")
        assert isinstance(self, torch.nn.Module)
        self.load_state_dict(state, strict=False)
        for name in self.components:
            part = directory / name
            if not (part / CONFIG_NAME).is_file():
                raise CheckpointError(f"{part}: component {name!r} missing (expected {CONFIG_NAME} and "
                                      f"{WEIGHTS_NAME} there)")
            getattr(self, name)._read_weights(part, map_location)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu") -> M:
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no saved {cls.__name__} here (expected a directory)")
        config = load_config(cls.config_class, directory / CONFIG_NAME)
        model = cls(config)  # type: ignore[call-arg]
        model._read_weights(directory, map_location)
        return model
