"""Runs one trial in its own process: build, measure, check accuracy; returns a result or a reason.

A fresh process per trial isolates crashes (a segfault in a kernel fails one trial, not the search),
enforces the time limit, and gives an honest peak-memory figure (no memory left over from earlier
trials for the allocator to reuse). The parent talks to it through two JSON files:

    request:  {pipeline, config, device, threads, min_time_s, min_calls, workdir, known_accuracy}
    result:   {status: complete | pruned | failed, reason, metrics}

The worker's stdout/stderr (warnings, tracebacks) go to worker.log in the trial's workdir.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .errors import Unsupported


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS so the next RSS measurement starts from live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


CALIBRATION_BATCHES = 16


def calibration_batches(pipeline) -> list[tuple]:
    """The pipeline's calibration_data, or seeded make_inputs batches when it has none."""
    import torch

    if pipeline.calibration_data is not None:
        return [tuple(batch) for batch in list(pipeline.calibration_data())[:CALIBRATION_BATCHES]]
    batches = []
    for seed in range(8):
        torch.manual_seed(seed)
        batches.append(pipeline.make_inputs(32))
    return batches


def build_candidate(pipeline, config: dict, device: str, threads: int, workdir: str, batch_inputs: tuple):
    """Model-level knobs, then the runtime's prepare: (runtime, Prepared, context, build seconds)."""
    from . import knobs, runtimes

    runtime = runtimes.get(config["compile_mode"])
    ctx = runtimes.BuildContext(
        device=device, threads=threads, workdir=workdir, example_inputs=pipeline.make_inputs(2),
        batch_inputs=batch_inputs, calibration=lambda: calibration_batches(pipeline),
    )
    started = time.perf_counter()
    model = knobs.apply_model_knobs(pipeline.build_model().eval(), config, ctx, runtime.REALIZES)
    model.eval()  # a statement: exported (PT2E) models return None from eval()
    prepared = runtime.prepare(model, config, ctx)
    return runtime, prepared, ctx, time.perf_counter() - started


def run_trial(request: dict) -> dict:
    """The trial itself, inside the worker process."""
    from .cache import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir("inductor"))  # compiled kernels, reusable
    import torch

    from .accuracy import candidate_accuracy
    from .measure import PeakMemory, time_calls
    from .pipeline import load_pipeline

    config, device = request["config"], request["device"]
    threads = int(config.get("threads", request["threads"]))
    torch.set_num_threads(threads)
    if request.get("pipeline_pickle"):
        import cloudpickle

        with open(request["pipeline_pickle"], "rb") as f:
            pipeline = cloudpickle.load(f)
    else:
        pipeline = load_pipeline(request["pipeline"])
    inputs = tuple(t.to(device) for t in pipeline.make_inputs(int(config["batch_size"])))
    runtime, prepared, ctx, build_s = build_candidate(pipeline, config, device, threads, request["workdir"], inputs)

    _release_free_memory()
    started = time.perf_counter()
    with PeakMemory(device) as peak:
        built = runtime.load(prepared, config, ctx)
        latency = time_calls(
            lambda: built.predict(*inputs),
            min_time_s=request["min_time_s"], min_calls=request["min_calls"], sync=built.sync,
        )
    measure_s = time.perf_counter() - started

    started = time.perf_counter()
    accuracy = request.get("known_accuracy")
    if accuracy is None:
        accuracy = candidate_accuracy(pipeline, built.predict)
    accuracy_s = time.perf_counter() - started
    return {
        "status": "complete",
        "reason": None,
        "metrics": {
            "latency_ms_p50": latency.p50_ms,
            "latency_ms_p95": latency.p95_ms,
            "latency_ms_p99": latency.p99_ms,
            "latency_cv": latency.cv,
            "timed_calls": latency.calls,
            "throughput": int(config["batch_size"]) / (latency.p50_ms / 1e3),
            "peak_memory_mb": peak.mb,
            "model_size_mb": prepared.model_size_mb,
            "accuracy": accuracy,
            "threads": threads,
            "build_s": build_s,
            "measure_s": measure_s,
            "accuracy_s": accuracy_s,
        },
    }


def run_isolated(request: dict, workdir: str, timeout_s: float) -> dict:
    """Run `run_trial` in a child process; never raises for what happens inside the trial."""
    work = Path(workdir)
    request = {**request, "workdir": str(work)}
    request_path, result_path, log_path = work / "request.json", work / "result.json", work / "worker.log"
    request_path.write_text(json.dumps(request))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoopt.worker", str(request_path), str(result_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return _failed(f"timeout: no result after {timeout_s:g} s")
        except BaseException:  # Ctrl-C in the parent: do not leave the worker running
            _kill(proc)
            raise
    if result_path.exists():
        return json.loads(result_path.read_text())
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return _failed(f"crashed: {name}" + (" (killed: out of memory?)" if name == "SIGKILL" else ""))
    return _failed(f"worker exited with code {code}: {_last_line(log_path)}")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _failed(reason: str) -> dict:
    return {"status": "failed", "reason": reason, "metrics": {}}


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _die_with_parent() -> None:
    """A search killed hard (kill -9) must not leave its worker running (Linux: PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _die_with_parent()
    request_path, result_path = argv
    request = json.loads(Path(request_path).read_text())
    try:
        result = run_trial(request)
    except Unsupported as exc:
        result = {"status": "pruned", "reason": str(exc), "metrics": {}, "scope": exc.scope}
    except Exception as exc:  # noqa: BLE001 - any failure of the candidate is this trial's result
        traceback.print_exc()
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        result = _failed(summary[-1][:500] if summary else type(exc).__name__)
    tmp = f"{result_path}.tmp"
    Path(tmp).write_text(json.dumps(result))
    os.replace(tmp, result_path)  # the parent sees a whole result or none
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
