"""Do the search's figures hold outside the search? Export each search's winner and re-time it.

    python benchmarks/fidelity.py [--trials 10] [--pipelines digits_cnn,text_transformer] [--formats onnx,torchscript]

For each bundled pipeline and export format: a search restricted to the runtime the format ships
(`--export FORMAT`), then the winner's bundle is verified and re-timed in a fresh process with plain
onnxruntime / torch.jit.load (autoopt's export verifier: 10 warm-up calls, then at least 30 calls and
1 s) under the bundle's recorded malloc environment. Prints, per search, the winner's p50 latency in the
search, in the end-of-search interleaved re-measurement (when the winner took part), and in the fresh
process, with the ratios fresh / search, and fresh without that environment / search (for the record);
writes benchmarks/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import autoopt
from autoopt.knobs import describe

TARGET_LATENCY = {"digits_cnn": "100ms", "text_transformer": "20ms"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pipelines", default="digits_cnn,text_transformer")
    parser.add_argument("--formats", default="onnx,torchscript")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in args.pipelines.split(","):
            for fmt in args.formats.split(","):
                started = time.perf_counter()
                result = autoopt.search(pipeline, target_latency=TARGET_LATENCY.get(pipeline), trials=args.trials,
                                        seed=args.seed, tracking_uri=os.path.join(tmp, "mlruns"), export=fmt,
                                        out=os.path.join(tmp, f"{pipeline}-{fmt}"))
                if result.exported is None:
                    rows.append({"pipeline": pipeline, "format": fmt, "exported": False})
                    print(f"{pipeline} {fmt}: nothing exported (no feasible trial on its runtime)", flush=True)
                    continue
                manifest = result.exported.manifest
                trial = next(t for t in result.trials if t.number == manifest["source"]["trial"])
                search_ms = manifest["metrics"]["latency_ms_p50"]
                fresh_ms = manifest["verification"]["fresh_process_latency_ms_p50"]
                plain_ms = manifest["verification"]["fresh_process_latency_ms_p50_without_environment"]
                remeasured_ms = trial.remeasured["latency_ms_p50"] if trial.remeasured else None
                rows.append({
                    "pipeline": pipeline, "format": fmt, "exported": True, "trial": trial.number,
                    "config": trial.config, "search_p50_ms": search_ms, "remeasured_p50_ms": remeasured_ms,
                    "fresh_p50_ms": fresh_ms, "fresh_over_search": fresh_ms / search_ms,
                    "environment": manifest["runtime"]["environment"], "fresh_p50_ms_without_environment": plain_ms,
                    "without_environment_over_search": plain_ms / search_ms,
                    "fresh_over_remeasured": fresh_ms / remeasured_ms if remeasured_ms else None,
                    "wall_s": time.perf_counter() - started,
                })
                print(f"{pipeline} {fmt}: done in {rows[-1]['wall_s']:.0f} s", flush=True)

    def fmt_ms(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{'pipeline':<17} {'format':<12} {'trial':>5} {'search p50':>11} {'re-measured':>12} {'fresh p50':>10} "
          f"{'fresh/search':>13} {'fresh/re-meas.':>15} {'no env/search':>14}  winner")
    for r in rows:
        if not r["exported"]:
            print(f"{r['pipeline']:<17} {r['format']:<12} nothing exported")
            continue
        ratio2 = "-" if r["fresh_over_remeasured"] is None else f"{r['fresh_over_remeasured']:.2f}"
        print(f"{r['pipeline']:<17} {r['format']:<12} {r['trial']:>5} {fmt_ms(r['search_p50_ms']):>11} "
              f"{fmt_ms(r['remeasured_p50_ms']):>12} {fmt_ms(r['fresh_p50_ms']):>10} {r['fresh_over_search']:>13.2f} "
              f"{ratio2:>15} {r['without_environment_over_search']:>14.2f}  {describe(r['config'])}")
    within = [abs(r["fresh_over_search"] - 1) <= 0.10 for r in rows if r["exported"]]
    print(f"\nwithin +-10% of the search's figure: {sum(within)}/{len(within)}")
    out = Path(__file__).parent / "results" / "fidelity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "trials": args.trials,
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
