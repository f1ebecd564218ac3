"""`autoopt bench BUNDLE`: re-time an exported bundle the way its export verified it.

Each run is a fresh interpreter that cannot import autoopt (verifier.py), started with the bundle's
malloc environment, loading the model with its format's plain loader and timing a warm-up then three
blocks of calls on the bundle's example inputs (`example_inputs.npz`, written by the export), tiled
to the batch size. The median over the fresh processes is reported beside the figures the search and
the export recorded, and the CPU of both machines; so is the serving memory (serving_rss_mb: the peak resident
memory of such a process, from its start to its last timed call).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path

from .directory import EXAMPLE_INPUTS
from ..errors import ConfigError, ExportError


def tiled(arrays: list, batch: int) -> list:
    """Rows of each array repeated along the batch axis up to `batch` rows (as make_inputs does)."""
    import numpy as np

    return [np.ascontiguousarray(a[np.arange(batch) % len(a)]) for a in arrays]


def retime(path, batch: int | None = None, processes: int = 3) -> dict:
    """Re-time the bundle at `path` at `batch` (default: the trial's) in `processes` fresh processes."""
    import numpy as np

    from .export import run_verifier
    from . import manifest as bundle_manifest
    from ..machine import cpu_description
    from ..runtimes import export_format

    manifest = bundle_manifest.read(path, f"Bundle {path}")
    bundle = Path(path).resolve()
    if not (bundle / EXAMPLE_INPUTS).is_file():
        raise ConfigError(f"Bundle {path} has no {EXAMPLE_INPUTS} (it was exported by an earlier autoopt): there are "
                          "no inputs to time it on. Export it again with `autoopt export`.")
    fixed = manifest.fixed_batch
    if fixed and batch and int(batch) != fixed:
        raise ConfigError(f"Bundle {path} was compiled for batch size {fixed} only (its model could not be exported "
                          f"with a dynamic batch). Got --batch {batch}. Drop --batch, or pass --batch {fixed}.")
    batch = int(batch or manifest.config["batch_size"])
    with np.load(bundle / EXAMPLE_INPUTS) as data:
        example = [data[f"arr_{i}"] for i in range(len(manifest.inputs))]
    work = Path(tempfile.mkdtemp(prefix="autoopt-bench-"))
    try:
        np.savez(work / f"inputs_{batch}.npz", *tiled(example, batch))
        env = {**os.environ, **manifest.environment}
        fmt = export_format(manifest.format)
        try:
            reports = [run_verifier(work, bundle, fmt, [], batch, env) for _ in range(processes)]
        except ExportError as exc:  # the manifest read fine: the model file itself is damaged or foreign
            raise ConfigError(f"Bundle {path}: its model file {bundle / manifest.model_file} does not load or run "
                              f"in a fresh process ({str(exc).partition(': ')[2]}). Export the trial again with "
                              "`autoopt export`.") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p50 = statistics.median(r["latency_ms_p50"] for r in reports)
    return {
        "bundle": str(bundle), "format": manifest.format, "batch": batch, "processes": processes,
        "latency_ms_p50": p50, "latency_ms_p95": statistics.median(r["latency_ms_p95"] for r in reports),
        "throughput": batch / (p50 / 1e3), "per_process_p50_ms": [r["latency_ms_p50"] for r in reports],
        "serving_rss_mb": statistics.median(r["serving_rss_mb"] for r in reports),
        "export_serving_rss_mb": manifest.verified.get("serving_rss_mb"),
        "cpu": cpu_description(), "built_on": cpu_description(manifest.machine) if manifest.machine else None,
        "search": {"batch": manifest.config["batch_size"], "latency_ms_p50": manifest.recorded.get("latency_ms_p50"),
                   "latency_ms_p95": manifest.recorded.get("latency_ms_p95"), "throughput": manifest.recorded.get("throughput"),
                   "remeasured": bool(manifest.remeasured)},
        "export_fresh_process_latency_ms_p50": manifest.verified.get("fresh_process_latency_ms_p50"),
    }
