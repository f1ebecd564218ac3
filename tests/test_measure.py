import time

import pytest

from autoopt.trial.measure import PeakMemory, percentile, time_calls


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile(list(range(101)), 99) == 99


def test_time_calls_on_a_known_duration():
    latency = time_calls(lambda: time.sleep(0.002), min_time_s=0.1, min_calls=20)
    assert latency.calls >= 20 and latency.warmup_calls >= 5
    assert 1.9 <= latency.p50_ms < 10
    assert latency.p50_ms <= latency.p95_ms <= latency.p99_ms
    assert latency.cv >= 0


def test_time_calls_honours_min_time():
    started = time.perf_counter()
    time_calls(lambda: None, min_time_s=0.2, min_calls=1)
    assert time.perf_counter() - started >= 0.2


def test_sync_is_called_for_every_timed_call():
    calls = []
    time_calls(lambda: None, min_time_s=0.0, min_calls=20, sync=lambda: calls.append(1))
    assert len(calls) >= 25  # 5 warm-up at least, then 20 timed


def test_peak_memory_sees_a_transient_allocation():
    with PeakMemory("cpu") as peak:
        block = bytearray(80 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        del block
    assert 75 <= peak.mb <= 120


def test_peak_memory_sampler_fallback(monkeypatch):
    import autoopt.trial.measure as measure

    monkeypatch.setattr(measure, "_reset_hwm", lambda: False)
    with PeakMemory("cpu", sample_interval_s=0.001) as peak:
        block = bytearray(60 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(0.05)
        del block
    assert peak.mb >= 50


@pytest.mark.gpu
def test_peak_memory_on_cuda():
    import torch

    with PeakMemory("cuda") as peak:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert peak.mb >= 60


def test_a_noisy_measurement_is_repeated_and_the_steadiest_kept(monkeypatch):
    """On a fake clock (no real timing): the first pass alternates 0.1 ms / 4 ms calls, then calls are steady."""
    import itertools

    from autoopt.trial import measure

    now = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    delays = itertools.chain([0.0001, 0.004] * 11, itertools.repeat(0.001))  # 2 warm-up + 20 timed calls noisy

    def call():
        now[0] += next(delays)

    latency, repeats = measure.time_steadily(call, min_time_s=0.0, min_calls=20, warmup_min_calls=2, warmup_max_s=0.0)
    assert repeats == 1 and latency.cv == 0.0 and latency.p50_ms == pytest.approx(1.0)
    steady, repeats = measure.time_steadily(call, min_time_s=0.0, min_calls=20)
    assert repeats == 0


PAGE_FAULTS = r'''
import json, resource, sys, torch
from autoopt.trial.measure import pin_allocator
# glibc's own defaults, fixed: left alone, malloc raises its threshold when an earlier large block is
# freed, which varies between runs (the very reason for pinning) and would make this test flaky
applied = pin_allocator() if sys.argv[1:] == ["pin"] else pin_allocator(GLIBC_DEFAULTS)
torch.set_num_threads(1)
x = torch.randn(16, 1, 32, 32)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
def faults_per_call():
    with torch.no_grad():
        for _ in range(5): model(x)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20): model(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20
print(json.dumps({"faults_per_call": faults_per_call(), "applied": applied}))
'''


GLIBC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}


def test_pinned_allocator_stops_per_call_page_faults():
    """The reason for pinning: with glibc's default thresholds each call faults its activations back in."""
    import json
    import subprocess
    import sys

    from autoopt.trial.measure import ALLOCATOR_ENV, allocator_env

    if not allocator_env():
        pytest.skip("not glibc")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    script = f"GLIBC_DEFAULTS = {GLIBC_DEFAULTS!r}\n" + PAGE_FAULTS
    stock, pinned = (json.loads(subprocess.run([sys.executable, "-c", script, *arg], capture_output=True,
                                               text=True, env=env, timeout=120).stdout.strip().splitlines()[-1])
                     for arg in ([], ["pin"]))
    assert stock["applied"] == GLIBC_DEFAULTS and pinned["applied"] == ALLOCATOR_ENV
    # stock: every call faults its activations in again; pinned: at most a one-off heap growth
    assert stock["faults_per_call"] > 100 and pinned["faults_per_call"] < stock["faults_per_call"] / 10, (stock, pinned)


def test_allocator_env_keeps_the_users_own_values(monkeypatch):
    from autoopt.trial.measure import ALLOCATOR_ENV, allocator_env, pin_allocator

    if not allocator_env():
        pytest.skip("not glibc")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator_env() == {**ALLOCATOR_ENV, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    assert pin_allocator({"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "nonsense"}) == {}
    assert pin_allocator(ALLOCATOR_ENV) == ALLOCATOR_ENV
