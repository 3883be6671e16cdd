"""What machine a run is on: versions, device, bf16 support. Recorded in run directories and reports."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata

from defi.config import Config


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (avx512_bf16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> str:
    """The one place a device is chosen outside training (where accelerate chooses): "auto" -> "cuda" when a GPU
    is visible, else "cpu"; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def environment_info() -> dict[str, object]:
    import torch

    versions = {}
    for pkg in ("torch", "accelerate", "diffusers", "transformers", "metaworld", "mujoco", "zarr", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, object] = {
        "defi": metadata.version("defi") if _installed("defi") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": resolve_device(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_bf16": cpu_supports_bf16(),
        "versions": versions,
    }
    return info


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


@dataclass
class EnvConfig(Config):
    """`defi env`: print versions, device and mixed-precision support as JSON."""


def run(cfg: EnvConfig) -> dict[str, object]:
    info = environment_info()
    print(json.dumps(info, indent=2))
    return info
