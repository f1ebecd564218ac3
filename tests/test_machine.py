"""The CPU's model and the instruction sets that decide what is fast, read from /proc/cpuinfo."""

import pytest

from autoopt import machine
from autoopt.machine import cpu_description, cpu_info

SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile
"""
SKYLAKE = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: fpu avx2 avx512f avx512bw\n"


def test_the_features_that_decide_speed_are_named(tmp_path):
    (tmp_path / "amx").write_text(SAPPHIRE)
    (tmp_path / "skylake").write_text(SKYLAKE)
    amx, skylake = cpu_info(str(tmp_path / "amx")), cpu_info(str(tmp_path / "skylake"))
    assert amx["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert amx["features"] == ["AMX-BF16", "AMX-INT8", "AVX512-VNNI", "AVX512-BF16", "AVX512-FP16", "AVX-512", "AVX2"]
    assert skylake["features"] == ["AVX-512", "AVX2"]
    assert cpu_description(skylake).endswith(": AVX-512, AVX2 (no AMX)")
    assert "(no AMX)" not in cpu_description(amx)


def test_this_machine_is_read_without_error():
    info = cpu_info()
    assert info["cores"] >= 1 and isinstance(info["features"], list) and info["model"]


def test_fast_bf16_is_measured_and_only_named_where_it_measured_fast(monkeypatch):
    assert machine.bf16_matmul_speedup() > 0
    monkeypatch.setattr(machine, "cpu_info", lambda: {"model": "fake", "cores": 2, "features": ["AVX512-BF16"]})
    monkeypatch.setattr(machine, "bf16_matmul_speedup", lambda: 1.5)
    assert machine.search_features("cpu") == ["AVX512-BF16", machine.FAST_BF16]
    monkeypatch.setattr(machine, "bf16_matmul_speedup", lambda: 0.8)
    assert machine.search_features("cpu") == ["AVX512-BF16"]
    assert machine.search_features("cuda") == []


def test_gpu_info_names_the_device_or_is_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.gpu_info() is None


@pytest.mark.gpu
def test_gpu_info_on_a_cuda_machine():
    info = machine.gpu_info()
    assert info["name"] and info["compute_capability"].count(".") == 1 and info["memory_gb"] > 0
