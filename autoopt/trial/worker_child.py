"""The worker process's side (`python -m autoopt.trial.worker_child --serve FD`, started by worker.Worker): the serve
loop, one request's task (candidate.py: an inference trial or a re-measurement; training.py; serving.py: the
serving memory in a process of its own) and what the candidate raises turned into the trial's result.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from ..errors import Unsupported
from .measure import OverTarget
from .protocol import TrialRequest, TrialResult

_PIPELINES: dict = {}  # a warm worker loads each pipeline once


def _pipeline(request: TrialRequest):
    from ..pipeline import load_pipeline

    key = request.pipeline_pickle or request.pipeline
    if key not in _PIPELINES:
        if request.pipeline_pickle:
            import cloudpickle

            with open(request.pipeline_pickle, "rb") as f:
                _PIPELINES[key] = cloudpickle.load(f)
        else:
            _PIPELINES[key] = load_pipeline(request.pipeline)
    return _PIPELINES[key]


def run_request(request: TrialRequest) -> TrialResult:
    """The request's task, inside the worker process."""
    import torch

    from . import candidate

    if "torch._dynamo" in sys.modules:  # compiled graphs of earlier trials: free them, reset the counters
        torch._dynamo.reset()
    os.environ["AUTOOPT_TRIAL"] = str(request.trial if request.trial is not None else "")  # a pipeline may tag its logs
    pipeline = _pipeline(request)
    if request.task == "remeasure":
        return candidate.remeasure(pipeline, request)
    if request.task == "serve":  # in a worker of its own: its resident memory is the figure
        from .serving import serve_in_python

        return serve_in_python(pipeline, request)
    if request.task == "train":
        from .training import run_train_trial

        threads = int(request.config.get("threads", request.threads))
        torch.set_num_threads(threads)
        return run_train_trial(pipeline, request.for_trial(config={**request.config, "threads": threads}))
    return candidate.run_trial(pipeline, request)


def run_caught(request: TrialRequest) -> TrialResult:
    """`run_request`, with what the candidate raises turned into the trial's result."""
    try:
        return run_request(request)
    except Unsupported as exc:
        return TrialResult.pruned(str(exc), scope=exc.scope)
    except OverTarget as exc:
        return TrialResult.pruned(str(exc), exc.metrics)
    except Exception as exc:  # noqa: BLE001 - any failure of the candidate is this trial's result
        traceback.print_exc()
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        return TrialResult.failed(summary[-1][:500] if summary else type(exc).__name__)


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
    from ..cache import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir("inductor"))  # compiled kernels, reusable
    import torch  # noqa: F401 - the point of a warm worker: paid once, before the first trial arrives

    from . import accuracy, candidate, measure  # noqa: F401
    from .. import knobs, runtimes  # noqa: F401

    measure.pin_allocator()
    for line in sys.stdin:
        job = json.loads(line)
        with _output_to(job["log"]):
            result = run_caught(TrialRequest.from_json(Path(job["request"]).read_text()))
        tmp = f"{job['result']}.tmp"
        Path(tmp).write_text(result.to_json())
        os.replace(tmp, job["result"])  # the parent sees a whole result or none
        done.write(b"done\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"] or len(sys.argv) != 3:
        sys.exit("usage: python -m autoopt.trial.worker_child --serve FD (started by autoopt, not by hand)")
    sys.exit(serve(int(sys.argv[2])))
