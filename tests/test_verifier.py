"""The fresh-process verifier: its timing rule, its loader mechanism, and that autoopt stays out of it."""

import json
import subprocess
import sys

import pytest

from autoopt.bundle import verifier


class FakeClock:
    def __init__(self, durations):
        self.now, self.durations = 0.0, iter(durations)

    def __call__(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += next(self.durations)


def test_a_block_times_at_least_its_calls_and_seconds_and_reports_p50_and_p95():
    clock = FakeClock([0.001] * 19 + [0.1])
    p50, p95 = verifier.block(clock.advance, min_calls=20, min_s=0.0, clock=clock)
    assert (p50, p95) == pytest.approx((1.0, 100.0))
    clock = FakeClock([0.01] * 1000)
    verifier.block(clock.advance, min_calls=1, min_s=0.5, clock=clock)
    assert clock.now >= 0.5


def test_the_median_block_decides_so_one_slow_stretch_does_not(monkeypatch):
    monkeypatch.setattr(verifier, "WARMUP_CALLS", 1)
    monkeypatch.setattr(verifier, "BLOCK_CALLS", 2)
    monkeypatch.setattr(verifier, "WARMUP_S", 0.0)
    monkeypatch.setattr(verifier, "BLOCK_S", 0.0)
    # warm-up 1 call, then three blocks of 2 calls: 1 ms, 50 ms (a slow stretch), 2 ms
    clock = FakeClock([0.1, 0.001, 0.001, 0.05, 0.05, 0.002, 0.002])
    figures = verifier.time_call(clock.advance, clock=clock)
    assert figures == {"latency_ms_p50": pytest.approx(2.0), "latency_ms_p95": pytest.approx(2.0)}


def test_a_plain_loader_is_defined_from_its_source_alone():
    source = "def load(bundle, manifest):\n    import math\n    return lambda arrays: {'y': math.sqrt(bundle)}\n"
    assert verifier.plain_loader(source, "load")(16, {})([]) == {"y": 4.0}


def test_the_script_cannot_import_autoopt(tmp_path):
    """A loader that imports autoopt fails in the verifier's process, though autoopt is installed here."""
    import numpy as np

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "autoopt.json").write_text(json.dumps({"inputs": [{"name": "x"}]}))
    np.savez(tmp_path / "inputs_1.npz", np.zeros(1))
    source = "def load(bundle, manifest):\n    import autoopt\n    return lambda arrays: {}\n"
    request = {"bundle": str(bundle), "work": str(tmp_path), "batches": [1], "time_batch": 1,
               "loader": source, "loader_name": "load"}
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-I", verifier.__file__, str(tmp_path / "request.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr and "autoopt" in done.stderr
