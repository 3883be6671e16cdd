"""What machine a run is on: versions, device, bf16 support. Recorded in run directories and reports."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata

from defi.config import Config

# The ISA extensions that decide CPU speed figures here: AVX2/FMA (fp32 kernels), AVX-512, and the native bf16
# instructions (avx512_bf16, AMX) without which bf16 autocast is emulated and slower than fp32 (measured 20x slower
# on an AVX2-only CPU).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (avx512_bf16 or AMX), where bf16 autocast pays."""
    flags = cpu_description()["flags"] or []
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description() -> dict[str, object]:
    """What a CPU speed figure depends on (machines differ): {"model": CPU model name, "flags": the `SPEED_FLAGS`
    this CPU has (None where /proc/cpuinfo cannot be read, i.e. unknown, not absent), "cpus": logical CPUs,
    "threads": torch's intra-op thread count}."""
    import torch

    info = _cpuinfo()
    model, flags = platform.processor() or platform.machine(), None
    if info is not None:
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        model = fields.get("model name", model)
        present = set(fields.get("flags", "").split())
        flags = [flag for flag in SPEED_FLAGS if flag in present]
    return {"model": model, "flags": flags, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def describe_cpu(threads: int | None = None, description: dict[str, object] | None = None) -> str:
    """One line for a speed table: "CPU AMD EPYC (2 logical CPUs); avx2 fma; no avx512_bf16, no amx_bf16; 1 torch
    thread" (`threads` overrides the current thread count, e.g. for another process)."""
    d = cpu_description() if description is None else description
    flags = d["flags"]
    if flags is None:
        isa = "ISA flags unknown (no /proc/cpuinfo)"
    else:
        missing = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
        isa = " ".join(flags) or "none of " + " ".join(SPEED_FLAGS)
        isa += "".join(f"; no {f}" for f in missing)
    threads = d["threads"] if threads is None else threads
    return (f"CPU {d['model']} ({d.get('cpus')} logical CPUs); {isa}; "
            f"{threads} torch thread{'s' if threads != 1 else ''}")


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
