"""The fresh-process check of an exported bundle: proof that it needs nothing of autoopt.

`bundle/export.py` runs this file as a script in a new interpreter (`python -I verifier.py REQUEST`), where
`import autoopt` is made impossible. It loads the bundle with its format's plain loader (a
self-contained function of the runtime, sent as source: see runtimes.base.ExportFormat), runs the
saved inputs at each batch size, and times one batch size as a deployment would see it.

REQUEST (JSON): bundle, work (a directory), batches, time_batch, loader (source), loader_name, and
optionally warmup_s and block_s (the seconds of the warm-up and of each timed block), serve_calls (instead
of the timing: this many untimed calls at time_batch, for the serving memory alone).
In `work`: reads inputs_<batch>.npz (arr_0, arr_1, ... in input order); writes outputs_<batch>.npz
(keyed by output path) and report.json ({latency_ms_p50, latency_ms_p95, serving_rss_mb}): serving_rss_mb is
this process's peak resident memory (VmHWM) at the end: the interpreter, the runtime's libraries, the
loaded model and its calls, as a process serving the bundle holds them.
This module imports nothing of autoopt, so that tests can import it and the script can run without it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

WARMUP_CALLS, WARMUP_S = 20, 0.5
BLOCKS, BLOCK_CALLS, BLOCK_S = 3, 30, 1.0


def block(call: Callable[[], object], min_calls: int, min_s: float, clock=time.perf_counter) -> tuple[float, float]:
    """(p50, p95) in ms of calls timed for at least `min_calls` calls and `min_s` seconds."""
    samples, started = [], clock()
    while len(samples) < min_calls or clock() - started < min_s:
        t = clock()
        call()
        samples.append((clock() - t) * 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.95)]


def time_call(call: Callable[[], object], clock=time.perf_counter, warmup_s: float | None = None,
              block_s: float | None = None) -> dict:
    """Warm-up, then the median of BLOCKS blocks: one slow stretch of the machine does not decide."""
    block(call, WARMUP_CALLS, WARMUP_S if warmup_s is None else warmup_s, clock)
    blocks = [block(call, BLOCK_CALLS, BLOCK_S if block_s is None else block_s, clock) for _ in range(BLOCKS)]
    middle = len(blocks) // 2
    return {"latency_ms_p50": sorted(b[0] for b in blocks)[middle],
            "latency_ms_p95": sorted(b[1] for b in blocks)[middle]}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (VmHWM; ru_maxrss where /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KB on Linux


def plain_loader(source: str, name: str) -> Callable:
    """The format's loader function, defined from its source in a namespace of its own."""
    namespace: dict = {}
    exec(compile(source, f"<plain loader {name}>", "exec"), namespace)  # noqa: S102 - autoopt's own code
    return namespace[name]


def main(request_path: str) -> int:
    import numpy as np

    with open(request_path) as f:
        request = json.load(f)
    bundle, work = request["bundle"], request["work"]
    with open(f"{bundle}/autoopt.json") as f:
        manifest = json.load(f)
    run = plain_loader(request["loader"], request["loader_name"])(bundle, manifest)
    n_inputs = len(manifest["inputs"])

    def inputs(batch: int) -> list:
        data = np.load(f"{work}/inputs_{batch}.npz")
        return [data[f"arr_{i}"] for i in range(n_inputs)]

    for batch in request["batches"]:
        np.savez(f"{work}/outputs_{batch}.npz", **run(inputs(batch)))
    timed = inputs(request["time_batch"])
    if request.get("serve_calls"):
        for _ in range(request["serve_calls"]):
            run(timed)
        report = {}
    else:
        report = time_call(lambda: run(timed), warmup_s=request.get("warmup_s"), block_s=request.get("block_s"))
    with open(f"{work}/report.json", "w") as f:
        json.dump({**report, "serving_rss_mb": peak_rss_mb()}, f)
    return 0


if __name__ == "__main__":
    sys.modules["autoopt"] = None  # type: ignore[assignment] - an import of autoopt now fails
    sys.exit(main(sys.argv[1]))
