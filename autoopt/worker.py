"""Runs trials in a child process: build, measure, check accuracy; returns a result or a reason.

A child process isolates crashes (a segfault in a kernel fails one trial, not the search) and
enforces the time limit. It is kept warm between trials (torch imported and the pipeline loaded
once: about 3 s saved per trial) and replaced after a crash, a timeout or `max_trials` trials;
`Worker(reuse=False)` gives each trial a fresh process. The parent and the child talk through files
and two pipes:

    stdin, one JSON line per trial:  {request, result, log}  (paths)
    request: {task, pipeline, config, device, threads, min_time_s, min_calls, workdir, known_numerics,
              memory_limit_mb, trial, reference_numerics (training)}
    result:  {status: complete | pruned | failed, reason, metrics}
    done pipe: one line per trial once its result file is written

During a trial the child's stdout/stderr (warnings, tracebacks) go to that trial's worker.log.
Latency is measured under an exclusive per-device lock, builds and accuracy checks under a shared
one, so that parallel workers (`--jobs`, or several searches on one machine) never run while a
measurement runs.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from .errors import Unsupported
from .measure import OverTarget

CALIBRATION_BATCHES = 16
MAX_TRIALS_PER_WORKER = 25  # then a fresh process: bounds whatever a runtime leaks between trials
EARLY_STOP_MARGIN = 1.5  # a trial whose calls already take this many times the latency target stops


@contextlib.contextmanager
def device_lock(device: str, exclusive: bool):
    """Machine-wide lock per device: exclusive while timing, shared while building or checking accuracy."""
    path = os.path.join(tempfile.gettempdir(), f"autoopt-{device}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock (the kernel also does when the process dies)


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


_PIPELINES: dict = {}  # a warm worker loads each pipeline once


def _pipeline(request: dict):
    from .pipeline import load_pipeline

    key = request.get("pipeline_pickle") or request["pipeline"]
    if key not in _PIPELINES:
        if request.get("pipeline_pickle"):
            import cloudpickle

            with open(request["pipeline_pickle"], "rb") as f:
                _PIPELINES[key] = cloudpickle.load(f)
        else:
            _PIPELINES[key] = load_pipeline(request["pipeline"])
    return _PIPELINES[key]


def run_trial(request: dict) -> dict:
    """The trial itself, inside the worker process."""
    import torch

    from .accuracy import candidate_accuracy
    from .measure import PeakMemory, latency_metrics, machine_load, time_steadily

    if "torch._dynamo" in sys.modules:  # compiled graphs of earlier trials: free them, reset the counters
        torch._dynamo.reset()
    os.environ["AUTOOPT_TRIAL"] = str(request.get("trial", ""))  # lets a pipeline tag its own logs
    pipeline = _pipeline(request)
    if request.get("task") == "remeasure":
        return remeasure(pipeline, request)
    config, device = request["config"], request["device"]
    threads = int(config.get("threads", request["threads"]))
    torch.set_num_threads(threads)
    if request.get("task") == "train":
        from .training import run_train_trial

        return run_train_trial(pipeline, {**request, "config": {**config, "threads": threads}},
                               lambda exclusive: device_lock(device, exclusive))
    inputs = tuple(t.to(device) for t in pipeline.make_inputs(int(config["batch_size"])))
    with device_lock(device, exclusive=False):
        runtime, prepared, ctx, build_s = build_candidate(pipeline, config, device, threads, request["workdir"], inputs)

    limit_mb, limit_ms = request.get("memory_limit_mb"), request.get("latency_limit_ms")
    recent_ms: collections.deque = collections.deque(maxlen=5)  # the last 5 call times
    with device_lock(device, exclusive=True):
        started = time.perf_counter()
        with PeakMemory(device) as peak:
            def guard(calls: int, seconds: float = 0.0) -> None:  # a trial already past a target stops here
                if limit_mb is not None and peak.current_mb() > limit_mb:
                    raise OverTarget(f"memory: peak {peak.current_mb():.1f} MB is over the {limit_mb:g} MB target "
                                     f"(stopped after {calls} calls)", {"peak_memory_mb": peak.current_mb()})
                if limit_ms is None or not calls:
                    return
                recent_ms.append(seconds * 1e3)
                # Past the first 5 calls (first runs, JIT profiling), 5 calls in a row whose median is
                # past EARLY_STOP_MARGIN x the target cannot end under it: stop without timing the rest.
                median = statistics.median(recent_ms)
                if calls >= 10 and median > EARLY_STOP_MARGIN * limit_ms:
                    raise OverTarget(
                        f"latency: {median:.2f} ms per call over 5 calls, past {EARLY_STOP_MARGIN:g}x the {limit_ms:g} ms "
                        f"target (stopped after {calls} calls; accuracy not checked)",
                        {"latency_ms_p50": median, "latency_ms_p95": max(recent_ms),
                         "throughput": int(config["batch_size"]) / (median / 1e3), "stopped_early": 1})

            built = runtime.load(prepared, config, ctx)
            guard(0)
            load = machine_load()
            latency, repeats = time_steadily(
                lambda: built.predict(*inputs),
                min_time_s=request["min_time_s"], min_calls=request["min_calls"], sync=built.sync, after_call=guard,
            )
        measure_s = time.perf_counter() - started

    metrics = {
        **latency_metrics(latency, repeats, load, int(config["batch_size"])),
        "peak_memory_mb": peak.mb,
        "model_size_mb": prepared.model_size_mb,
        "threads": threads,
        "build_s": build_s,
        "measure_s": measure_s,
    }
    if limit_ms is not None and latency.p95_ms > limit_ms:  # infeasible whatever its accuracy: not checked
        raise OverTarget(f"latency: p95 {latency.p95_ms:.2f} ms is over the {limit_ms:g} ms target "
                         f"(accuracy not checked)", metrics)
    started = time.perf_counter()
    accuracy = (request.get("known_numerics") or {}).get("accuracy")
    if accuracy is None:
        with device_lock(device, exclusive=False):
            accuracy = candidate_accuracy(pipeline, built.predict)
    return {"status": "complete", "reason": None,
            "metrics": {**metrics, "accuracy": accuracy, "accuracy_s": time.perf_counter() - started}}


def remeasure(pipeline, request: dict) -> dict:
    """Time several configurations interleaved (A B C, A B C, ... for `rounds` rounds) in one process,
    so that each round sees the same machine state; the first configuration is the baseline of the
    per-round throughput ratios. Returns per configuration the median figures and the median ratio."""
    import torch

    from .measure import percentile, time_calls

    device = request["device"]
    candidates = []
    with device_lock(device, exclusive=False):
        for i, config in enumerate(request["configs"]):
            threads = int(config.get("threads", request["threads"]))
            torch.set_num_threads(threads)
            inputs = tuple(t.to(device) for t in pipeline.make_inputs(int(config["batch_size"])))
            work = os.path.join(request["workdir"], f"candidate-{i}")
            os.makedirs(work, exist_ok=True)
            runtime, prepared, ctx, _ = build_candidate(pipeline, config, device, threads, work, inputs)
            built = runtime.load(prepared, config, ctx)
            candidates.append((built, inputs, threads, int(config["batch_size"])))
    rounds: list[list] = [[] for _ in candidates]
    with device_lock(device, exclusive=True):
        for _ in range(request["rounds"]):
            for i, (built, inputs, threads, _) in enumerate(candidates):
                torch.set_num_threads(threads)
                rounds[i].append(time_calls(lambda: built.predict(*inputs), min_time_s=request["round_time_s"],
                                            min_calls=5, warmup_min_calls=2, warmup_max_s=0.5, sync=built.sync))
    throughput = [[bs / (lat.p50_ms / 1e3) for lat in rounds[i]] for i, (*_, bs) in enumerate(candidates)]
    figures = []
    for i, (*_, bs) in enumerate(candidates):
        p50 = statistics.median(lat.p50_ms for lat in rounds[i])
        figures.append({
            "throughput": bs / (p50 / 1e3), "latency_ms_p50": p50,
            "latency_ms_p95": percentile([lat.p95_ms for lat in rounds[i]], 50),
            "speedup": statistics.median(a / b for a, b in zip(throughput[i], throughput[0])),
            "rounds": len(rounds[i]),
        })
    return {"status": "complete", "reason": None, "metrics": {"figures": figures}}


def run_caught(request: dict) -> dict:
    """`run_trial`, with what the candidate raises turned into the trial's result."""
    try:
        return run_trial(request)
    except Unsupported as exc:
        return {"status": "pruned", "reason": str(exc), "metrics": {}, "scope": exc.scope}
    except OverTarget as exc:
        return {"status": "pruned", "reason": str(exc), "metrics": exc.metrics}
    except Exception as exc:  # noqa: BLE001 - any failure of the candidate is this trial's result
        traceback.print_exc()
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        return _failed(summary[-1][:500] if summary else type(exc).__name__)


class Worker:
    """The parent's handle on one worker process; `run` executes one trial and never raises for what
    happens inside it (KeyboardInterrupt aside: `interrupt()` from another thread stops the trial)."""

    def __init__(self, log_dir: str, reuse: bool = True, max_trials: int = MAX_TRIALS_PER_WORKER):
        self.log_dir = log_dir
        self.max_trials = max_trials if reuse else 1
        self.started = 0  # processes started, for the orchestration report
        self._proc: subprocess.Popen | None = None
        self._done = None
        self._served = 0
        self._interrupted = threading.Event()

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        self.started += 1
        with open(os.path.join(self.log_dir, f"worker-{os.getpid()}-{id(self)}.log"), "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "autoopt.worker", "--serve", str(write_fd)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
        self._done = os.fdopen(read_fd, "rb", buffering=0)
        self._served = 0

    def run(self, request: dict, workdir: str, timeout_s: float) -> dict:
        work = Path(workdir)
        request_path, result_path, log_path = work / "request.json", work / "result.json", work / "worker.log"
        request_path.write_text(json.dumps({**request, "workdir": str(work)}))
        log_path.touch()
        if self._proc is not None and self._proc.poll() is not None:  # died while idle: not this trial's fault
            self.close()
        if self._proc is None:
            self._start()
        try:
            self._proc.stdin.write((json.dumps({"request": str(request_path), "result": str(result_path),
                                                "log": str(log_path)}) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:  # it died between trials: its exit status is the reason below
            pass
        deadline = time.monotonic() + timeout_s
        line = None
        while line is None:
            if self._interrupted.is_set():
                self.close()
                raise KeyboardInterrupt
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._replace()
                return _failed(f"timeout: no result after {timeout_s:g} s")
            if select.select([self._done], [], [], min(remaining, 0.2))[0]:
                line = self._done.readline()
        if line and result_path.exists():
            self._served += 1
            if self._served >= self.max_trials:
                self._replace()
            return json.loads(result_path.read_text())
        if self._interrupted.is_set():
            self.close()
            raise KeyboardInterrupt
        code = self._proc.wait()
        self._replace()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return _failed(f"crashed: {name}" + (" (killed: out of memory?)" if name == "SIGKILL" else ""))
        return _failed(f"worker exited with code {code}: {_last_line(log_path)}")

    def _replace(self) -> None:
        """Stop this process and start the next one now: its start-up overlaps the parent's bookkeeping."""
        self.close()
        self._start()

    def interrupt(self) -> None:
        """From another thread (Ctrl-C): the trial running now raises KeyboardInterrupt in its thread,
        which also closes the pipes it is waiting on."""
        self._interrupted.set()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdin.close()
        if self._done is not None:
            self._done.close()
            self._done = None


def _failed(reason: str) -> dict:
    return {"status": "failed", "reason": reason, "metrics": {}}


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _die_with_parent() -> None:
    """A search killed hard (kill -9) must not leave its worker running (Linux: PR_SET_PDEATHSIG).
    The signal comes when the *thread* that started the worker ends: start a worker from a thread
    that outlives its use."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _output_to(path: str):
    """Point fds 1 and 2 (Python's and native code's output) at the trial's log, then back."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def serve(done_fd: int) -> int:
    _die_with_parent()
    os.set_inheritable(done_fd, False)  # the worker's own children must not hold the pipe open
    done = os.fdopen(done_fd, "wb", buffering=0)
    from .cache import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir("inductor"))  # compiled kernels, reusable
    import torch  # noqa: F401 - the point of a warm worker: paid once, before the first trial arrives

    from . import accuracy, knobs, measure, runtimes  # noqa: F401

    measure.pin_allocator()
    for line in sys.stdin:
        job = json.loads(line)
        with _output_to(job["log"]):
            result = run_caught(json.loads(Path(job["request"]).read_text()))
        tmp = f"{job['result']}.tmp"
        Path(tmp).write_text(json.dumps(result))
        os.replace(tmp, job["result"])  # the parent sees a whole result or none
        done.write(b"done\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"] or len(sys.argv) != 3:
        sys.exit("usage: python -m autoopt.worker --serve FD (started by autoopt, not by hand)")
    sys.exit(serve(int(sys.argv[2])))
