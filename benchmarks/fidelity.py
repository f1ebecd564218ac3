"""Do the search's figures hold outside the search? Export each search's winner and re-time it.

    python benchmarks/fidelity.py [--trials 10] [--seeds 0] [--retimes 5]
                                  [--pipelines digits_cnn,text_transformer] [--formats onnx,torchscript]

For each bundled pipeline, export format and seed: a search restricted to the runtime the format ships
(`--export FORMAT`); its export verifies the winner's bundle and times it once in a fresh process with
plain onnxruntime / torch.jit.load (a warm-up, then the median of three blocks of at least 1 s) under
the bundle's recorded malloc environment. Then the same timing in `--retimes` more fresh processes, one
after another: their median is the re-timed figure (one process's figure moves with the machine's slow
stretches; the spread is printed). The search's figure is the one the winner was chosen on: its
end-of-search interleaved re-measurement when it took part, else its trial's. Prints the trial's p50,
the re-measured p50, the verifier's, the re-timed median (min-max), re-timed / search, re-timed / trial,
and, for the record, the verifier's figure without the malloc environment / search; writes
benchmarks/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import autoopt
from autoopt.bundle.export import run_verifier
from autoopt.knobs import describe
from autoopt.runtimes import export_format

TARGET_LATENCY = {"digits_cnn": "100ms", "text_transformer": "20ms"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pipelines", default="digits_cnn,text_transformer")
    parser.add_argument("--formats", default="onnx,torchscript")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--retimes", type=int, default=5)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in args.pipelines.split(","):
            for fmt in args.formats.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    rows.append(one(pipeline, fmt, seed, args.trials, args.retimes, tmp))

    print(f"\n{'pipeline':<17} {'format':<12} {'seed':>4} {'trial':>5} {'trial p50':>10} {'re-measured':>12} "
          f"{'verifier':>9} {'re-timed (min-max)':>22} {'re-timed/search':>16} {'re-timed/trial':>15} "
          f"{'no env/search':>14}  winner")
    for r in rows:
        if not r["exported"]:
            print(f"{r['pipeline']:<17} {r['format']:<12} {r['seed']:>4} nothing exported")
            continue
        remeasured = "-" if r["remeasured_p50_ms"] is None else f"{r['remeasured_p50_ms']:.3f}"
        spread = f"{r['retimed_p50_ms']:.3f} ({min(r['retimes_ms']):.2f}-{max(r['retimes_ms']):.2f})"
        print(f"{r['pipeline']:<17} {r['format']:<12} {r['seed']:>4} {r['trial']:>5} {r['trial_p50_ms']:>10.3f} "
              f"{remeasured:>12} {r['verifier_p50_ms']:>9.3f} {spread:>22} {r['retimed_over_search']:>16.2f} "
              f"{r['retimed_p50_ms'] / r['trial_p50_ms']:>15.2f} "
              f"{r['fresh_p50_ms_without_environment'] / r['search_p50_ms']:>14.2f}  {describe(r['config'])}")
    exported = [r for r in rows if r["exported"]]
    within = sum(abs(r["retimed_over_search"] - 1) <= 0.10 for r in exported)
    print(f"\nre-timed within +-10% of the search's figure: {within}/{len(exported)} exported ({len(rows)} searches)")
    out = Path(__file__).parent / "results" / "fidelity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "trials": args.trials,
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}, indent=2))
    print(f"wrote {out}")


def one(pipeline: str, fmt: str, seed: int, trials: int, retimes: int, tmp: str) -> dict:
    """One search with --export FMT, its verifier's figures, and `retimes` more fresh processes."""
    started = time.perf_counter()
    bundle = Path(tmp) / f"{pipeline}-{fmt}-{seed}"
    result = autoopt.search(pipeline, target_latency=TARGET_LATENCY.get(pipeline), trials=trials, seed=seed,
                            tracking_uri=os.path.join(tmp, "mlruns"), export=fmt, out=str(bundle))
    row = {"pipeline": pipeline, "format": fmt, "seed": seed, "exported": result.exported is not None}
    if result.exported is None:
        print(f"{pipeline} {fmt} seed {seed}: nothing exported (no feasible trial on its runtime)", flush=True)
        return row
    manifest = result.exported.manifest
    verification = manifest["verification"]
    remeasured = manifest["remeasured"]["latency_ms_p50"] if manifest.get("remeasured") else None
    search_ms = remeasured or manifest["metrics"]["latency_ms_p50"]  # the figure the winner was chosen on
    times = retime(bundle, manifest, autoopt.load_pipeline(pipeline), retimes)
    row.update({
        "trial": manifest["source"]["trial"], "config": manifest["config"],
        "trial_p50_ms": manifest["metrics"]["latency_ms_p50"], "remeasured_p50_ms": remeasured,
        "search_p50_ms": search_ms, "verifier_p50_ms": verification["fresh_process_latency_ms_p50"],
        "retimes_ms": times, "retimed_p50_ms": statistics.median(times),
        "retimed_over_search": statistics.median(times) / search_ms,
        "environment": manifest["runtime"]["environment"],
        "fresh_p50_ms_without_environment": verification["fresh_process_latency_ms_p50_without_environment"],
        "wall_s": time.perf_counter() - started,
    })
    print(f"{pipeline} {fmt} seed {seed}: done in {row['wall_s']:.0f} s", flush=True)
    return row


def retime(bundle: Path, manifest: dict, pipe, n: int) -> list[float]:
    """p50 of the bundle's batch in `n` fresh processes, one after another, each exactly as the export
    verifier times it (plain onnxruntime / torch.jit.load, the bundle's malloc environment)."""
    import numpy as np

    batch = int(manifest["config"]["batch_size"])
    with tempfile.TemporaryDirectory() as work:
        np.savez(Path(work) / f"inputs_{batch}.npz", *[t.numpy() for t in pipe.make_inputs(batch)])
        env = {**os.environ, **manifest["runtime"]["environment"]}
        fmt = export_format(manifest["format"])
        return [run_verifier(Path(work), bundle, fmt, [], batch, env)["latency_ms_p50"] for _ in range(n)]


if __name__ == "__main__":
    main()
