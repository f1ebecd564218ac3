"""The worker process: trials run in a child process, which isolates crashes (a segfault in a kernel
fails one trial, not the search) and enforces the time limit.

A worker is kept warm between trials (torch imported and the pipeline loaded once: about 3 s saved
per trial) and replaced after a crash, a timeout or `max_trials` trials; `Worker(reuse=False)` gives
each trial a fresh process. The parent and the child talk through files and two pipes:

    stdin, one JSON line per trial:  {request, result, log}  (paths of the files below)
    request file: a protocol.TrialRequest;  result file: a protocol.TrialResult
    done pipe: one line per trial once its result file is written

During a trial the child's stdout/stderr (warnings, tracebacks) go to that trial's worker.log. This module is
the parent's side; the child's (its serve loop, a request's task) is worker_child.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .protocol import TrialRequest, TrialResult

MAX_TRIALS_PER_WORKER = 25  # then a fresh process: bounds whatever a runtime leaks between trials


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
                [sys.executable, "-m", "autoopt.trial.worker_child", "--serve", str(write_fd)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
        self._done = os.fdopen(read_fd, "rb", buffering=0)
        self._served = 0

    def run(self, request: TrialRequest, workdir: str, timeout_s: float) -> TrialResult:
        work = Path(workdir)
        request_path, result_path, log_path = work / "request.json", work / "result.json", work / "worker.log"
        request_path.write_text(request.for_trial(workdir=str(work)).to_json())
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
        try:
            while line is None:
                if self._interrupted.is_set():
                    raise KeyboardInterrupt
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._replace()
                    return TrialResult.failed(f"timeout: no result after {timeout_s:g} s")
                if select.select([self._done], [], [], min(remaining, 0.2))[0]:
                    line = self._done.readline()
        except KeyboardInterrupt:  # from interrupt(), or Ctrl-C itself in the main thread (the re-measurement)
            self.close()
            raise
        if line and result_path.exists():
            self._served += 1
            if self._served >= self.max_trials:
                self._replace()
            return TrialResult.from_json(result_path.read_text())
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
            return TrialResult.failed(f"crashed: {name}" + (" (killed: out of memory?)" if name == "SIGKILL" else ""))
        return TrialResult.failed(f"worker exited with code {code}: {_last_line(log_path)}")

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


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
