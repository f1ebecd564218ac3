"""What machine a figure was measured on: the CPU's model and the features that decide what is fast
(AMX, AVX-512 VNNI/BF16/FP16), read at run time, never assumed."""

from __future__ import annotations

import os
import platform

# lscpu / /proc/cpuinfo flag -> how it is named in a report
FEATURES = {"amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
            "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16", "avx512f": "AVX-512", "avx2": "AVX2"}


def available_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"model": the CPU model name, "cores": cores this process may use, "features": the FEATURES it has}."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags:  # the first processor's block says it all
                    break
    except OSError:
        pass
    features = [name for flag, name in FEATURES.items() if flag in flags]
    return {"model": model, "cores": available_cores(), "features": features}


def cpu_description(info: dict | None = None) -> str:
    """One line for a benchmark's output: 'Intel(R) Xeon(R) Processor, 2 cores: AVX512-VNNI, ... (no AMX)'."""
    info = info or cpu_info()
    features = ", ".join(info["features"]) or "none of the AMX/AVX-512 features"
    amx = "" if any(f.startswith("AMX") for f in info["features"]) else " (no AMX)"
    return f"{info['model']}, {info['cores']} cores: {features}{amx}"
