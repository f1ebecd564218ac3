"""A trial runs in a worker process: results come back, and crashes, exceptions and hangs become
reasons; a warm worker serves trial after trial and is replaced after a failure."""

import pytest

from autoopt.targets import Targets
from autoopt.trial.protocol import InferRequest, TrialResult
from autoopt.report.results import TrialState
from autoopt.trial.worker import Worker
from conftest import TINY_MLP

REQUEST = InferRequest(pipeline=TINY_MLP, device="cpu", threads=1, min_time_s=0.05, min_calls=20)
GROWTH_100MB = Targets(memory_mb=100, memory_basis="growth")  # a trial whose memory growth passes it stops
LATENCY_5MS = {"targets": Targets(latency_ms=5), "early_stop": True}
CONFIG = {"precision": "fp32", "batch_size": 4, "compile_mode": "eager"}

FAULTY = """
import os, time, torch, autoopt

class Faulty(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 8:
            {action}
        return x * 2

PIPELINE = autoopt.Pipeline("faulty", Faulty, lambda b: (torch.randn(b, 3),))
"""


@pytest.fixture
def worker(tmp_path):
    w = Worker(str(tmp_path))
    yield w
    w.close()


SHARED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _shared_worker(tmp_path_factory):
    """One warm worker for the tests that do not count processes (a crash or a hang replaces it, as in
    a search)."""
    SHARED["worker"] = Worker(str(tmp_path_factory.mktemp("workers")))
    yield
    SHARED.pop("worker").close()


def run(tmp_path, pipeline, config, timeout_s=120, worker=None, name="trial", **request):
    work = tmp_path / name
    work.mkdir()
    worker = worker or SHARED["worker"]
    return worker.run(REQUEST.for_trial(pipeline=pipeline, config=config, **request), str(work), timeout_s)


def test_a_complete_trial_reports_every_metric(tmp_path):
    result = run(tmp_path, TINY_MLP, CONFIG)
    assert result.state == TrialState.COMPLETE, result
    m = result.metrics
    for key in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "throughput", "peak_memory_mb",
                "model_size_mb", "accuracy", "threads"):
        assert key in m
    assert m["accuracy"] == 1.0 and m["threads"] == 1 and m["timed_calls"] >= 20
    assert m["throughput"] > 0 and m["latency_ms_p50"] <= m["latency_ms_p95"]


def test_an_exception_fails_the_trial_with_its_summary(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="raise ValueError('bad batch')"))
    result = run(tmp_path, path, {**CONFIG, "batch_size": 8})
    assert result == TrialResult.failed("ValueError: bad batch")
    assert "Traceback" in (tmp_path / "trial" / "worker.log").read_text()


def test_a_crash_is_named_by_its_signal(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="os.abort()"))
    assert run(tmp_path, path, {**CONFIG, "batch_size": 8}).reason == "crashed: SIGABRT"


def test_a_hang_hits_the_time_limit(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="time.sleep(600)"))
    result = run(tmp_path, path, {**CONFIG, "batch_size": 8}, timeout_s=4)
    assert result == TrialResult.failed("timeout: no result after 4 s")


def test_ctrl_c_in_the_thread_that_waits_stops_the_worker_at_once(tmp_path, write_file, worker):
    """The end-of-search re-measurement waits in the main thread: Ctrl-C lands there, not via interrupt()."""
    import os
    import signal
    import threading

    path = write_file("faulty.py", FAULTY.format(action="time.sleep(600)"))
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, path, {**CONFIG, "batch_size": 8}, worker=worker)
    finally:
        timer.cancel()
    assert worker._proc is None  # killed and reaped, not left running until the search ends


def test_a_warm_worker_serves_many_trials_and_is_replaced_after_a_crash(tmp_path, write_file, worker):
    path = write_file("faulty.py", FAULTY.format(action="os.abort()"))
    outcomes = [run(tmp_path, path, {**CONFIG, "batch_size": b}, worker=worker, name=f"t{i}")
                for i, b in enumerate((4, 2, 8, 4, 8, 2))]
    assert [o.state for o in outcomes] == ["COMPLETE", "COMPLETE", "FAILED", "COMPLETE", "FAILED", "COMPLETE"]
    assert worker.started == 3  # one process for the first trials, then one more after each of the two crashes
    # Each trial's output lands in its own log, the warm process notwithstanding.
    assert "Traceback" not in (tmp_path / "t0" / "worker.log").read_text()


def test_fresh_workers_start_a_process_per_trial(tmp_path):
    w = Worker(str(tmp_path), reuse=False)
    try:
        for i in range(2):
            assert run(tmp_path, TINY_MLP, CONFIG, worker=w, name=f"t{i}").state == TrialState.COMPLETE
    finally:
        w.close()
    assert w.started == 3  # one per trial, plus the next one started ahead


def test_a_trial_past_the_memory_target_is_pruned_early(tmp_path, write_file):
    path = write_file("hog.py", FAULTY.format(action="return x * 2 + torch.ones(64, 1024, 1024).sum()"))
    result = run(tmp_path, path, {**CONFIG, "batch_size": 8}, targets=GROWTH_100MB)
    assert result.state == TrialState.PRUNED
    assert result.reason.startswith("memory: peak ") and "over the 100 MB target (stopped after 1 calls)" in result.reason
    assert run(tmp_path, path, {**CONFIG, "batch_size": 4}, targets=GROWTH_100MB, name="small").state == "COMPLETE"


def test_timing_takes_the_device_alone(tmp_path):
    """While another process holds the exclusive (timing) lock, a shared (build) section waits."""
    import subprocess
    import sys
    import time

    from autoopt.trial.measure import device_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from autoopt.trial.measure import device_lock\n"
        "with device_lock('test-dev', exclusive=True):\n"
        "    print('held', flush=True); time.sleep(1.5)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with device_lock("test-dev", exclusive=False):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.8
    started = time.monotonic()
    with device_lock("test-dev", exclusive=False), device_lock("test-dev", exclusive=False):
        pass  # shared sections do not wait for each other
    assert time.monotonic() - started < 0.5


SPIKY = """
import itertools, time, torch, autoopt

CALLS = itertools.count()

class Spiky(torch.nn.Module):
    def forward(self, x):
        if next(CALLS) % 8 == 7:
            time.sleep(0.02)
        return x * 2

PIPELINE = autoopt.Pipeline("spiky", Spiky, lambda b: (torch.randn(b, 3),))
"""


def test_a_trial_far_over_the_latency_target_stops_early_and_one_over_it_skips_accuracy(tmp_path, write_file):
    slow = write_file("slow.py", FAULTY.format(action="time.sleep(0.02)"))
    result = run(tmp_path, slow, {**CONFIG, "batch_size": 8}, **LATENCY_5MS)
    assert result.state == TrialState.PRUNED and result.metrics["stopped_early"] == 1
    assert result.reason.startswith("latency: ") and "past 1.5x the 5 ms target (stopped after 10 calls" in result.reason
    spiky = write_file("spiky.py", SPIKY)  # fast calls, but every 8th takes 20 ms: p95 over, median under
    result = run(tmp_path, spiky, CONFIG, **LATENCY_5MS, name="over")
    assert result.state == TrialState.PRUNED and "accuracy" not in result.metrics and "stopped_early" not in result.metrics
    assert result.reason.startswith("latency: p95 ") and result.reason.endswith("(accuracy not checked)")
    assert run(tmp_path, TINY_MLP, CONFIG, targets=Targets(latency_ms=1000), early_stop=True, name="under").metrics["accuracy"] == 1.0


def test_remeasure_times_configurations_interleaved_against_the_first(tmp_path):
    result = run(tmp_path, TINY_MLP, CONFIG, task="remeasure", rounds=4, round_time_s=0.02,
                 configs=[CONFIG, {**CONFIG, "batch_size": 64}])
    first, second = result.metrics["figures"]
    assert result.state == TrialState.COMPLETE and first["rounds"] == second["rounds"] == 4
    assert first["speedup"] == 1.0 and second["speedup"] > 1.0  # batch 64 carries more samples per call
    assert second["throughput"] > first["throughput"] and first["latency_ms_p50"] <= first["latency_ms_p95"]


def test_a_short_timing_below_the_contenders_bar_screens_the_trial_out(tmp_path):
    fast = run(tmp_path, TINY_MLP, CONFIG, name="full")
    bar = fast.metrics["throughput"] * 100  # no candidate reaches 100x itself
    result = run(tmp_path, TINY_MLP, CONFIG, name="screened", screen_throughput=bar)
    assert result.state == TrialState.PRUNED and result.reason.startswith("screened out: about ")
    assert "not timed fully, accuracy not checked" in result.reason
    m = result.metrics
    assert m["screened"] == 1 and 0 < m["screen_throughput"] < bar and m["screen_latency_ms_p95"] > 0
    assert "throughput" not in m and "accuracy" not in m  # the screening figure is not the trial's measurement
    kept = run(tmp_path, TINY_MLP, CONFIG, name="contender", screen_throughput=fast.metrics["throughput"] / 100)
    assert kept.state == TrialState.COMPLETE and "screen_throughput" not in kept.metrics
