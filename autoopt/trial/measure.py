"""Latency, throughput and peak memory of a candidate.

Latency: warm up until the call time is stable (at least 5 calls), then time calls for at least
`min_time_s` and `min_calls`; report p50/p95/p99 and the coefficient of variation.
Peak memory on CPU: growth of the process's resident set over the measured span (the kernel's
high-water mark, reset at the start; a sampling thread where that is unavailable).
On CUDA: peak allocated bytes over the span.
Allocator: glibc malloc's thresholds are fixed in the worker (ALLOCATOR_ENV), so a figure does not
depend on what else the process happened to import; the bundle records them for deployment.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil


# glibc malloc returns a freed block of >= 128 KB to the OS (and trims the heap top), so every call
# page-faults its activations back in, unless an earlier large free raised malloc's dynamic threshold,
# and that depends on the process's history: importing scikit-learn first made the same TorchScript
# int8 file 1.4x faster (461 page faults per call -> 0). Fixed thresholds make the figure reproducible.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
_MALLOPT_PARAMS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def allocator_env() -> dict:
    """The malloc environment measurements run under: ALLOCATOR_ENV, or the user's own values of those
    variables; {} where the C library is not glibc (the variables mean nothing there)."""
    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018 - raises where the C library is not glibc
    except (OSError, AttributeError):
        return {}
    return {name: os.environ.get(name, value) for name, value in ALLOCATOR_ENV.items()}


def pin_allocator(env: dict | None = None) -> dict:
    """Apply `env` (default allocator_env()) to this process's malloc now, as the variables would at
    start-up; returns what was applied ({} when nothing could be)."""
    env = allocator_env() if env is None else env
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = {name: value for name, value in env.items()
                   if name in _MALLOPT_PARAMS and libc.mallopt(_MALLOPT_PARAMS[name], int(value)) == 1}
    except (OSError, AttributeError, ValueError):
        return {}
    return applied


@contextlib.contextmanager
def device_lock(device: str, exclusive: bool):
    """Machine-wide lock per device: exclusive while timing, shared while building or checking
    accuracy, so that parallel workers (`--jobs`, or several searches on one machine) never run while
    a measurement runs."""
    path = os.path.join(tempfile.gettempdir(), f"autoopt-{device}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock (the kernel also does when the process dies)


class OverTarget(Exception):
    """A trial stopped because it already misses a target (latency or memory past the target, a
    diverged loss): PRUNED with this reason, not FAILED, and with what was measured until then."""

    def __init__(self, reason: str, metrics: dict | None = None):
        super().__init__(reason)
        self.metrics = dict(metrics or {})


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cv: float  # stdev / mean of the timed calls: how noisy the measurement was
    calls: int
    warmup_calls: int


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sample."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_calls(
    fn: Callable[[], object],
    *,
    min_time_s: float = 1.0,
    min_calls: int = 20,
    warmup_min_calls: int = 5,
    warmup_max_s: float = 5.0,
    stable_tolerance: float = 0.1,
    sync: Callable[[], None] | None = None,
    after_call: Callable[[int, float], None] | None = None,
) -> Latency:
    """Time `fn()`; `sync` (e.g. torch.cuda.synchronize) is called before each clock read, and
    `after_call(calls so far, seconds of this call)` after it (outside the timed span): it may raise
    to stop early."""
    sync = sync or (lambda: None)
    calls = 0

    def once() -> float:
        nonlocal calls
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        calls += 1
        if after_call is not None:
            after_call(calls, elapsed)
        return elapsed

    # Warm-up: windows of `warmup_min_calls` calls until two consecutive medians agree.
    warm: list[float] = []
    started = time.perf_counter()
    previous = None
    while True:
        window = [once() for _ in range(warmup_min_calls)]
        warm += window
        current = statistics.median(window)
        if previous is not None and abs(current - previous) <= stable_tolerance * previous:
            break
        if time.perf_counter() - started > warmup_max_s:
            break
        previous = current

    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - started < min_time_s:
        samples.append(once())
    mean = statistics.fmean(samples)
    ms = [s * 1e3 for s in samples]
    return Latency(
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        cv=statistics.pstdev(samples) / mean if mean > 0 else 0.0,
        calls=len(samples),
        warmup_calls=len(warm),
    )


NOISY_CV = 0.2  # timed calls spread wider than this (stdev / mean) make a measurement unreliable


def time_steadily(fn: Callable[[], object], *, repeats: int = 1, noisy_cv: float = NOISY_CV,
                  **kwargs) -> tuple[Latency, int]:
    """`time_calls`, measured again (up to `repeats` more times) while its coefficient of variation is
    above `noisy_cv`; the steadiest measurement is kept. Returns it and how many repeats were run."""
    best = time_calls(fn, **kwargs)
    done = 0
    while best.cv > noisy_cv and done < repeats:
        again = time_calls(fn, **kwargs)
        done += 1
        if again.cv < best.cv:
            best = again
    return best, done


def latency_metrics(latency: Latency, repeats: int, load: float, batch_size: int) -> dict:
    """The metrics of a timed call (a predict, or a training step) as a trial reports them."""
    return {
        "latency_ms_p50": latency.p50_ms,
        "latency_ms_p95": latency.p95_ms,
        "latency_ms_p99": latency.p99_ms,
        "latency_cv": latency.cv,
        "latency_repeats": repeats,
        "latency_unreliable": int(latency.cv > NOISY_CV),
        "machine_load": load,
        "timed_calls": latency.calls,
        "throughput": batch_size / (latency.p50_ms / 1e3),
    }


def machine_load() -> float:
    """The 1-minute load average per core: about 0 on an idle machine, 1 when every core is busy."""
    import os

    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return float("nan")


def _read_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        return int(match.group(1)) * 1024 if match else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return _read_hwm_bytes() is not None
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb`: the growth over the block, in MB."""

    def __init__(self, device: str = "cpu", sample_interval_s: float = 0.002):
        self.device = device
        self.interval = sample_interval_s
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        # Freed heap pages first go back to the OS: the pinned trim threshold keeps up to 128 MB of them
        # resident, and allocations served from those would not show as growth.
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._process = psutil.Process()
        self._start = self._process.memory_info().rss
        self._sampler = None
        if not _reset_hwm():
            self._peak = self._start
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def current_mb(self) -> float:
        """The growth so far, inside the block."""
        if self.device == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated()
        elif self._sampler is not None:
            peak = max(self._peak, self._process.memory_info().rss)
        else:
            peak = _read_hwm_bytes()
        return max(0, peak - self._start) / 1e6

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        self.mb = self.current_mb()
