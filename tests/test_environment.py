"""What speed figures record about the machine (`cpu_description`), and `mixed_precision=auto` following the ISA."""

from __future__ import annotations

import torch

from defi.train.trainer import resolve_mixed_precision
from defi.utils import environment

AVX2_ONLY = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_description_of_this_machine():
    d = environment.cpu_description()
    assert set(d) == {"model", "flags", "cpus", "threads"}
    assert isinstance(d["model"], str) and d["model"] and d["threads"] == torch.get_num_threads()
    assert d["flags"] is None or set(d["flags"]) <= set(environment.SPEED_FLAGS)
    assert environment.describe_cpu(description=d).startswith(f"CPU {d['model']}")


def test_flags_decide_bf16_and_auto_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(environment, "_cpuinfo", lambda: AVX2_ONLY)
    d = environment.cpu_description()
    assert d["model"] == "AMD EPYC" and d["flags"] == ["avx2", "fma"]
    assert not environment.cpu_supports_bf16()
    assert resolve_mixed_precision("auto") == "no"  # emulated bf16 was 20x slower than fp32 on such a CPU
    assert "no avx512_bf16; no amx_bf16" in environment.describe_cpu(description=d)

    monkeypatch.setattr(environment, "_cpuinfo", lambda: SAPPHIRE_RAPIDS)
    d = environment.cpu_description()
    assert d["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert environment.cpu_supports_bf16() and resolve_mixed_precision("auto") == "bf16"
    assert "no " not in environment.describe_cpu(description=d)

    monkeypatch.setattr(environment, "_cpuinfo", lambda: None)  # no /proc/cpuinfo: unknown, not absent
    d = environment.cpu_description()
    assert d["flags"] is None and not environment.cpu_supports_bf16()
    assert "ISA flags unknown" in environment.describe_cpu(description=d)
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"
