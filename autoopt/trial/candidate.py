"""An inference candidate, inside the worker: build it, time it, check its accuracy; and the
interleaved re-measurement of several candidates at the end of a search. (training.py is the
counterpart for the training step.)

Builds and accuracy checks run under the shared device lock, timing under the exclusive one (see
measure.device_lock). A candidate already past a target stops early (measure.OverTarget).
"""

from __future__ import annotations

import collections
import os
import statistics
import time

from .build import build_candidate
from .measure import OverTarget, device_lock
from .protocol import InferRequest, RemeasureRequest, TrialResult
from ..targets import Targets

EARLY_STOP_MARGIN = 1.5  # a trial whose calls already take this many times the latency target stops
SCREEN_TIME_S = 0.2  # the short timing of a candidate, before the full one (at most a quarter of --min-time)


class EarlyStop:
    """Called after each timed call: stops a trial already past the memory target, or one whose last
    5 calls have a median past EARLY_STOP_MARGIN x the latency target (it cannot end under it)."""

    def __init__(self, peak, targets: Targets, early_stop: bool, batch_size: int):
        self.peak, self.targets, self.batch_size = peak, targets, batch_size
        self.latency_limit_ms = targets.latency_ms if early_stop else None
        self.recent_ms: collections.deque = collections.deque(maxlen=5)

    def __call__(self, calls: int, seconds: float = 0.0) -> None:
        growth = {"peak_memory_mb": self.peak.current_mb()}
        if self.targets.over("memory", growth):  # judged where the target bounds the memory growth
            raise OverTarget(f"memory: peak {growth['peak_memory_mb']:.1f} MB is over the {self.targets.memory_mb:g} MB "
                             f"target (stopped after {calls} calls)", growth)
        limit_ms = self.latency_limit_ms
        if limit_ms is None or not calls:
            return
        self.recent_ms.append(seconds * 1e3)
        median = statistics.median(self.recent_ms)
        if calls >= 10 and median > EARLY_STOP_MARGIN * limit_ms:  # past the first runs and JIT profiling
            raise OverTarget(
                f"latency: {median:.2f} ms per call over 5 calls, past {EARLY_STOP_MARGIN:g}x the {limit_ms:g} ms "
                f"target (stopped after {calls} calls; accuracy not checked)",
                {"latency_ms_p50": median, "latency_ms_p95": max(self.recent_ms),
                 "throughput": self.batch_size / (median / 1e3), "stopped_early": 1})


def run_trial(pipeline, request: InferRequest) -> TrialResult:
    """One inference trial: build, time under the exclusive lock, then check accuracy."""
    import torch

    from .accuracy import candidate_accuracy

    config, device = request.config, request.device
    threads = int(config.get("threads", request.threads))
    torch.set_num_threads(threads)
    batch_size = int(config["batch_size"])
    inputs = tuple(t.to(device) for t in pipeline.make_inputs(batch_size))
    with device_lock(device, exclusive=False):
        runtime, prepared, ctx, build_s = build_candidate(pipeline, config, device, threads, request.workdir, inputs,
                                                          request.accuracy_floor)
    metrics, built = _measure(runtime, prepared, config, ctx, inputs, request)
    metrics.update(threads=threads, build_s=build_s, **ctx.report)
    if prepared.model_size_mb is not None:
        metrics["model_size_mb"] = prepared.model_size_mb
    if request.early_stop and request.targets.over("latency", metrics):  # infeasible whatever its accuracy
        raise OverTarget(f"latency: p95 {metrics['latency_ms_p95']:.2f} ms is over the {request.targets.latency_ms:g} ms "
                         f"target (accuracy not checked)", metrics)
    if request.targets.serving_mb is not None:
        _check_serving(pipeline, runtime, prepared, config, ctx, inputs, request, metrics)
    started = time.perf_counter()
    accuracy = (request.known_numerics or {}).get("accuracy")
    if accuracy is None:
        with device_lock(device, exclusive=False):
            accuracy = candidate_accuracy(pipeline, built.predict)
    return TrialResult.complete({**metrics, "accuracy": accuracy, "accuracy_s": time.perf_counter() - started},
                                note="; ".join(ctx.notes) or None)


def _check_serving(pipeline, runtime, prepared, config: dict, ctx, inputs: tuple, request: InferRequest,
                   metrics: dict) -> None:
    """The serving memory of the candidate, into `metrics`; a candidate past the target stops here (PRUNED),
    before its accuracy check."""
    from .serving import serving_rss_mb

    rss_mb, via = serving_rss_mb(pipeline, runtime, prepared, config, ctx, inputs, request)
    metrics["serving_rss_mb"] = rss_mb
    if request.targets.over("memory", metrics) and not request.reference:  # the reference completes (infeasible)
        how = "its bundle" if via == "bundle" else "the model through autoopt in Python (its runtime ships no file)"
        raise OverTarget(f"serving memory: a fresh process serving {how} peaks at {rss_mb:,.0f} MB resident, over "
                         f"the {request.targets.memory_mb:g} MB target (accuracy not checked)", metrics)


def _measure(runtime, prepared, config: dict, ctx, inputs: tuple, request: InferRequest):
    """Load the candidate and time it alone on the device: (latency and memory metrics, Built)."""
    from .measure import PeakMemory, latency_metrics, machine_load, time_steadily

    batch_size = int(config["batch_size"])
    with device_lock(ctx.device, exclusive=True):
        started = time.perf_counter()
        with PeakMemory(ctx.device) as peak:
            guard = EarlyStop(peak, request.targets, request.early_stop, batch_size)
            built = runtime.load(prepared, config, ctx)
            guard(0)
            load = machine_load()
            if request.screen_throughput is not None:
                _screen(built, inputs, batch_size, request, guard)
            latency, repeats = time_steadily(lambda: built.predict(*inputs), min_time_s=request.min_time_s,
                                             min_calls=request.min_calls, sync=built.sync, after_call=guard)
        measure_s = time.perf_counter() - started
    metrics = {**latency_metrics(latency, repeats, load, batch_size), "peak_memory_mb": peak.mb,
               "measure_s": measure_s}
    return metrics, built


def _screen(built, inputs: tuple, batch_size: int, request: InferRequest, guard) -> None:
    """A short timing first: a candidate that cannot come near the best so far stops here, before its
    full timing and accuracy check. Its figures are kept as screen_* (never as the trial's latency)."""
    from .measure import time_calls

    short = time_calls(lambda: built.predict(*inputs), min_time_s=min(SCREEN_TIME_S, request.min_time_s / 4),
                       min_calls=5, warmup_min_calls=3, warmup_max_s=1.0, sync=built.sync, after_call=guard)
    throughput = batch_size / (short.p50_ms / 1e3)
    if throughput < request.screen_throughput:
        raise OverTarget(
            f"screened out: about {throughput:,.0f} samples/s in a short timing ({short.calls} calls), below the "
            f"{request.screen_throughput:,.0f} a contender needs (the best feasible trial's throughput less the "
            f"noise); not timed fully, accuracy not checked",
            {"screen_throughput": throughput, "screen_latency_ms_p95": short.p95_ms, "screened": 1})


def remeasure(pipeline, request: RemeasureRequest) -> TrialResult:
    """Time several configurations interleaved (A B C, A B C, ... for `rounds` rounds) in one process,
    so that each round sees the same machine state; the first configuration is the baseline of the
    per-round throughput ratios. Returns per configuration the median figures and the median ratio."""
    import torch

    from .measure import percentile, time_calls

    device = request.device
    candidates = []
    with device_lock(device, exclusive=False):
        for i, config in enumerate(request.configs):
            threads = int(config.get("threads", request.threads))
            torch.set_num_threads(threads)
            inputs = tuple(t.to(device) for t in pipeline.make_inputs(int(config["batch_size"])))
            work = os.path.join(request.workdir, f"candidate-{i}")
            os.makedirs(work, exist_ok=True)
            runtime, prepared, ctx, _ = build_candidate(pipeline, config, device, threads, work, inputs, request.accuracy_floor)
            candidates.append((runtime.load(prepared, config, ctx), inputs, threads, int(config["batch_size"])))
    rounds: list[list] = [[] for _ in candidates]
    settle_s = []
    with device_lock(device, exclusive=True):
        for _ in range(request.rounds):
            for i, (built, inputs, threads, _) in enumerate(candidates):
                torch.set_num_threads(threads)
                rounds[i].append(time_calls(lambda built=built, inputs=inputs: built.predict(*inputs),
                                            min_time_s=request.round_time_s,
                                            min_calls=5, warmup_min_calls=2, warmup_max_s=0.5, sync=built.sync))
                settle_s.append(settle())
    throughput = [[bs / (lat.p50_ms / 1e3) for lat in rounds[i]] for i, (*_, bs) in enumerate(candidates)]
    figures = []
    for i, (*_, bs) in enumerate(candidates):
        p50 = statistics.median(lat.p50_ms for lat in rounds[i])
        ratios = [a / b for a, b in zip(throughput[i], throughput[0])]
        figures.append({
            "throughput": bs / (p50 / 1e3), "latency_ms_p50": p50,
            "latency_ms_p95": percentile([lat.p95_ms for lat in rounds[i]], 50),
            "speedup": statistics.median(ratios), "speedup_q25": percentile(ratios, 25),
            "speedup_q75": percentile(ratios, 75),
            "throughput_q25": percentile(throughput[i], 25), "throughput_q75": percentile(throughput[i], 75),
            "rounds": len(rounds[i]),
        })
    return TrialResult.complete({"figures": figures, "settle_ms_max": max(settle_s, default=0.0) * 1e3})


SETTLE_SLICE_S, SETTLE_MAX_S = 0.005, 0.5
QUIET_SHARE = 0.1  # the process uses under a tenth of one core in a slice: no thread of the last turn still spins


def settle() -> float:
    """Wait until this process's threads are quiet: a runtime whose threads spin on after its calls (OpenMP's
    wait policy, a thread pool's spin-wait) would otherwise take the cores from the next candidate's turn.
    Returns the seconds waited (at most SETTLE_MAX_S)."""
    started = time.perf_counter()
    while time.perf_counter() - started < SETTLE_MAX_S:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(SETTLE_SLICE_S)
        if time.process_time() - cpu < QUIET_SHARE * (time.perf_counter() - wall):
            break
    return time.perf_counter() - started
