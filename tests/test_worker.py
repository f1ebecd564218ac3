"""A trial runs in its own process: results come back, and crashes, exceptions and hangs become reasons."""

from autoopt.worker import run_isolated
from conftest import TINY_MLP

REQUEST = {"pipeline": TINY_MLP, "pipeline_pickle": None, "device": "cpu", "threads": 1,
           "min_time_s": 0.05, "min_calls": 20}
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


def run(tmp_path, pipeline, config, timeout_s=120):
    work = tmp_path / "trial"
    work.mkdir()
    return run_isolated({**REQUEST, "pipeline": pipeline, "config": config}, str(work), timeout_s)


def test_a_complete_trial_reports_every_metric(tmp_path):
    result = run(tmp_path, TINY_MLP, CONFIG)
    assert result["status"] == "complete", result
    m = result["metrics"]
    for key in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "throughput", "peak_memory_mb",
                "model_size_mb", "accuracy", "threads"):
        assert key in m
    assert m["accuracy"] == 1.0 and m["threads"] == 1 and m["timed_calls"] >= 20
    assert m["throughput"] > 0 and m["latency_ms_p50"] <= m["latency_ms_p95"]


def test_an_exception_fails_the_trial_with_its_summary(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="raise ValueError('bad batch')"))
    result = run(tmp_path, path, {**CONFIG, "batch_size": 8})
    assert result == {"status": "failed", "reason": "ValueError: bad batch", "metrics": {}}
    assert "Traceback" in (tmp_path / "trial" / "worker.log").read_text()


def test_a_crash_is_named_by_its_signal(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="os.abort()"))
    assert run(tmp_path, path, {**CONFIG, "batch_size": 8})["reason"] == "crashed: SIGABRT"


def test_a_hang_hits_the_time_limit(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY.format(action="time.sleep(600)"))
    result = run(tmp_path, path, {**CONFIG, "batch_size": 8}, timeout_s=8)
    assert result == {"status": "failed", "reason": "timeout: no result after 8 s", "metrics": {}}
