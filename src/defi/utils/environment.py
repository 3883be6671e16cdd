"""What machine a run is on: versions, device, bf16 support. Recorded in run directories and reports."""

from __future__ import annotations

import json
import os
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


# x86 instruction sets that decide CPU inference speed: AVX2 is the baseline of recent kernels, AVX-512 doubles the
# vector width, avx512_bf16 / AMX (Sapphire Rapids and later) make bf16 matrix products pay (bf16 autocast on a CPU
# without them was measured many times slower than fp32).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict[str, object]:
    """What a speed figure must name (machines differ): the CPU model, which of `ISA_FLAGS` it has, the number of
    logical CPUs and torch's thread count (from /proc/cpuinfo on Linux; elsewhere `platform.processor()`)."""
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
    import torch

    return {"model": model, "flags": [f for f in ISA_FLAGS if f in flags], "cpus": os.cpu_count(),
            "threads": torch.get_num_threads()}


def describe_cpu(threads: int | None = None) -> str:
    """One line for benchmark and latency tables, e.g. "AMD EPYC, 2 logical CPUs, avx2 (no avx512f, avx512_bf16,
    amx_bf16, amx_tile), 1 torch thread"."""
    info = cpu_description()
    have: list[str] = info["flags"]  # type: ignore[assignment]
    missing = ", ".join(f for f in ISA_FLAGS if f not in have)
    line = f"{info['model']}, {info['cpus']} logical CPUs, " + (" ".join(have) or "none of " + " ".join(ISA_FLAGS))
    if have and missing:
        line += f" (no {missing})"
    threads = info["threads"] if threads is None else threads
    return line + f", {threads} torch thread{'s' if threads != 1 else ''}"


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
