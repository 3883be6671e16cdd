"""`save_pretrained` / `from_pretrained` for defi's own models.

A model class sets `config_class` (a dataclass config) and takes the config as its only constructor argument.
A saved model is a directory with `config.json` (the validated dataclass) and `model.safetensors`. We keep this
small mixin instead of `PyTorchModelHubMixin` because our configs are nested dataclasses that must be validated
(unknown key, wrong type) when read back, which that mixin does not do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from defi.config import load_config, save_config
from defi.errors import CheckpointError

M = TypeVar("M", bound="PretrainedMixin")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config and weights into `directory` atomically (a temporary sibling, then a rename)."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_config(self.config, tmp / CONFIG_NAME)
        assert isinstance(self, torch.nn.Module)
        save_model(self, str(tmp / WEIGHTS_NAME))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
        return directory

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu") -> M:
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no saved {cls.__name__} here (expected a directory)")
        config = load_config(cls.config_class, directory / CONFIG_NAME)
        model = cls(config)  # type: ignore[call-arg]
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        try:
            missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{weights}: cannot read weights ({err})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{weights}: weights do not match {cls.__name__} (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        return model
