"""Serving memory (`serving_rss_mb`): the peak resident memory of a fresh process that loads a candidate as a
deployment would and serves batches: what a container's or an edge box's memory limit meets.

A runtime that writes a file (torchscript, onnxruntime, openvino, aoti) is served the way its bundle is: the
file and its manifest go to a scratch folder, and verifier.py (a fresh `python -I` that cannot import autoopt)
loads them with the format's plain loader, serves SERVE_CALLS batches and reads its own high-water mark.
A runtime that ships no file (eager, torch.compile) is served in Python with the model's code: a fresh worker
process loads the pipeline and builds the candidate through autoopt, its high-water mark is reset after the
build, then the model is loaded and serves SERVE_CALLS batches.
The trial's own `peak_memory_mb` is the growth over load and timed calls in a warm worker: it leaves out the
interpreter, the libraries and whatever the process held before; serving_rss_mb counts them.
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

SERVE_CALLS = 5  # batches served before the high-water mark is read: the first calls allocate what later ones reuse


def serving_rss_mb(pipeline, runtime, prepared, config: dict, ctx, inputs: tuple, request) -> tuple[float, str]:
    """(MB, how it was served) for a built candidate, in a fresh process (see the module's docstring)."""
    from ..runtimes import format_for

    fmt = format_for(config["compile_mode"])
    if fmt is not None and prepared.artifact:
        return bundle_rss_mb(pipeline, fmt, config, prepared, inputs, Path(request.workdir) / "serving"), "bundle"
    return _fresh_worker_rss_mb(request.for_trial(task="serve", config=config), Path(request.workdir) / "serving"), \
        "python"


def bundle_rss_mb(pipeline, fmt: str, config: dict, prepared, inputs: tuple, folder: Path) -> float:
    """The bundle of `prepared` (format `fmt`) served by its plain loader in a fresh process without autoopt."""
    import numpy as np

    from ..bundle.export import model_manifest, place_files, run_verifier
    from ..runtimes import export_format

    spec = export_format(fmt)
    bundle = folder / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    try:
        place_files(spec, prepared.artifact, bundle)
        manifest = model_manifest(fmt, config, prepared, pipeline.build_model().eval(), pipeline.make_inputs(2))
        manifest.write(bundle)
        batch = int(config["batch_size"])
        np.savez(folder / f"inputs_{batch}.npz", *[t.detach().cpu().numpy() for t in inputs])
        env = {**os.environ, **manifest.environment}
        return run_verifier(folder, bundle, spec, [], batch, env, serve_calls=SERVE_CALLS)["serving_rss_mb"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fresh_worker_rss_mb(request, folder: Path) -> float:
    """Task "serve" (serve_in_python) in a worker process of its own."""
    from ..errors import AutoOptError
    from ..report.results import TrialState
    from .worker import Worker

    folder.mkdir(parents=True, exist_ok=True)
    worker = Worker(str(folder), reuse=False)
    try:
        result = worker.run(request, str(folder), 600)
    finally:
        worker.close()
    if result.state != TrialState.COMPLETE:
        raise AutoOptError(f"the serving memory could not be measured in a fresh process: {result.reason}")
    shutil.rmtree(folder, ignore_errors=True)
    return result.metrics["serving_rss_mb"]


def serve_in_python(pipeline, request):
    """Task "serve", in a fresh worker: build the candidate, reset the high-water mark, load and serve; the
    peak resident memory from there. A runtime that writes a file is served as its bundle instead."""
    import torch

    from .build import build_candidate
    from .measure import _read_hwm_bytes, _reset_hwm
    from .protocol import TrialResult
    from ..runtimes import format_for

    config = request.config
    threads = int(config.get("threads", request.threads))
    torch.set_num_threads(threads)
    inputs = tuple(t.to(request.device) for t in pipeline.make_inputs(int(config["batch_size"])))
    runtime, prepared, ctx, _ = build_candidate(pipeline, config, request.device, threads, request.workdir, inputs,
                                                request.accuracy_floor)
    fmt = format_for(config["compile_mode"])
    if fmt is not None and prepared.artifact:
        rss = bundle_rss_mb(pipeline, fmt, config, prepared, inputs, Path(request.workdir) / "bundle-serving")
        return TrialResult.complete({"serving_rss_mb": rss, "serving_via": "bundle"})
    gc.collect()
    _trim_heap()
    _reset_hwm()  # the build's own peak (calibration, conversion) is not the service's
    built = runtime.load(prepared, config, ctx)
    for _ in range(SERVE_CALLS):
        built.predict(*inputs)
    return TrialResult.complete({"serving_rss_mb": (_read_hwm_bytes() or 0) / 1e6, "serving_via": "python"})


def _trim_heap() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
