"""What machine a figure was measured on: the CPU's model and the features that decide what is fast
(AMX, AVX-512 VNNI/BF16/FP16), read at run time, never assumed."""

from __future__ import annotations

import functools
import os
import platform

# lscpu / /proc/cpuinfo flag -> how it is named in a report
FEATURES = {"amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
            "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16", "avx512f": "AVX-512", "avx2": "AVX2"}


# Not a flag but a measurement: bf16 matrix products at least this much faster than fp32 on this CPU.
# Flags alone do not say it: with AVX512-BF16 and no AMX, bf16 lost to fp32 on one Intel Xeon (0.75-0.90x
# eager) and won on an AMD EPYC (Zen 5: 1.5-2.6x eager, OpenVINO bf16 1.8x its f32; README).
FAST_BF16 = "BF16-FAST"
FAST_BF16_SPEEDUP = 1.2


def host_id() -> str:
    """This machine's name in a study shared by several machines: $AUTOOPT_HOST, else the hostname (set it
    where machines share a hostname, e.g. containers)."""
    import socket

    return os.environ.get("AUTOOPT_HOST") or socket.gethostname()


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


def gpu_info() -> dict | None:
    """{"name", "compute_capability" ("9.0"), "memory_gb"} of the CUDA device in use, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1)}


@functools.cache
def bf16_matmul_speedup() -> float:
    """fp32 / bf16 time of a 256x1024 @ 1024x1024 product on this CPU with every core (interleaved, best
    of 5 each; about 0.1 s, once per process): how much faster bf16 computes here."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
        pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
        best = dict.fromkeys(pairs, float("inf"))
        with torch.inference_mode():
            for _ in range(6):  # the first round warms up both
                for dtype, (x, y) in pairs.items():
                    start = time.perf_counter()
                    torch.mm(x, y)
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
        return best[torch.float32] / best[torch.bfloat16]
    finally:
        torch.set_num_threads(threads)


def search_features(device: str) -> list[str]:
    """What the warm start keys on: the CPU's features, plus FAST_BF16 where bf16 measured fast here."""
    if device != "cpu":
        return []
    features = cpu_info()["features"]
    return features + [FAST_BF16] if bf16_matmul_speedup() >= FAST_BF16_SPEEDUP else features
