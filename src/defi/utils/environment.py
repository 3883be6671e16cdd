"""What machine a run is on: versions, device, bf16 support. Recorded in run directories and reports."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata

from defi.config import Config

# x86 instruction sets that decide CPU inference speed: AVX2 is the baseline of recent kernels, AVX-512 doubles the
# vector width, avx512_bf16 / AMX (Sapphire Rapids and later) make bf16 matrix products pay.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, object]:
    """The CPU model name, logical CPU count and which of `ISA_FLAGS` it has, from /proc/cpuinfo (Linux; elsewhere
    the model is `platform.processor()` and the flags are empty)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break  # the first core's block is enough (x86 lists the model name before the flags)
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "isa": {flag: flag in flags for flag in ISA_FLAGS}}


def describe_cpu(threads: int | None = None) -> str:
    """One line for benchmark and latency tables, e.g. "AMD EPYC, 2 logical CPUs, avx2 (no avx512f, avx512_bf16,
    amx_bf16, amx_tile), 1 torch thread"."""
    info = cpu_info()
    isa: dict[str, bool] = info["isa"]  # type: ignore[assignment]
    have = " ".join(f for f, on in isa.items() if on) or "none of " + " ".join(ISA_FLAGS)
    missing = ", ".join(f for f, on in isa.items() if not on)
    line = f"{info['model']}, {info['logical_cpus']} logical CPUs, {have}" + (f" (no {missing})" if missing and
                                                                              any(isa.values()) else "")
    if threads is not None:
        line += f", {threads} torch thread{'s' if threads != 1 else ''}"
    return line


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (avx512_bf16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# CPU features that decide whether bf16 pays (autocast on a CPU without them is many times slower than fp32)
SPEED_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def cpu_description() -> dict[str, object]:
    """What a speed figure must name (DEVELOPERS.md: machines differ): CPU model, the flags that matter, the number
    of CPUs and torch's thread count."""
    import os

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = None
    return {"model": model, "flags": [f for f in SPEED_FLAGS if f in flags], "cpus": os.cpu_count(),
            "threads": threads}


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
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": resolve_device(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_bf16": cpu_supports_bf16(),
        "cpu": cpu_description(),
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
