"""The acceptance run of the default search: wall time, per-trial cost split, and the result.

    python benchmarks/search_default.py [--trials 12] [--target-latency 100ms] [--modes warm,fresh,jobs2]

Runs `autoopt.search` on the bundled default pipeline into a temporary MLflow store once per mode:
warm (the default: a worker process reused between trials), fresh (--fresh-workers: a new process per
trial) and jobs2 (--jobs 2, warm). Prints a table per trial of the first mode (wall time, time inside
the worker for build / measure / accuracy, and the orchestration overhead: the rest of the trial's
wall time, i.e. worker start-up, pipeline load, MLflow logging, sampling) and a summary row per mode,
and writes the figures to benchmarks/results/search_default.json. Ratios come from this one run.
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


class Clock:
    def __init__(self):
        self.started: dict[int, float] = {}
        self.wall: dict[int, float] = {}

    def trial_started(self, record):
        self.started[record.number] = time.perf_counter()

    def trial_finished(self, record):
        self.wall[record.number] = time.perf_counter() - self.started[record.number]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--target-latency", default="100ms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="warm,fresh,jobs2")
    args = parser.parse_args()
    modes = {"warm": {}, "fresh": {"fresh_workers": True}, "jobs2": {"jobs": 2}}
    summaries = {}
    for i, mode in enumerate(args.modes.split(",")):
        summaries[mode] = run_mode(args, modes[mode], print_trials=i == 0)
    print(f"\n{'mode':<7} {'trials':>6} {'total s':>8} {'overhead s/trial':>17} {'best':>5} {'speedup':>8}")
    for mode, s in summaries.items():
        print(f"{mode:<7} {s['trials']:>6} {s['total_wall_s']:>8.1f} "
              f"{s['mean_overhead_s_per_measured_trial'] or 0:>17.2f} {s['best_trial']!s:>5} {s['best_speedup'] or 0:>7.2f}x")
    out = Path(__file__).parent / "results" / "search_default.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summaries, indent=2))
    print(f"wrote {out}")


def run_mode(args, options: dict, print_trials: bool) -> dict:
    clock = Clock()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as store:
        result = autoopt.search(target_latency=args.target_latency, trials=args.trials, seed=args.seed,
                                tracking_uri=store, listeners=[clock], **options)
    total_s = time.perf_counter() - started

    rows = []
    for t in result.trials:
        m = t.metrics
        inside = sum(m.get(k, 0.0) for k in ("build_s", "measure_s", "accuracy_s"))
        measured = t.state == "COMPLETE" and t.reused_from is None
        rows.append({
            "trial": t.number, "state": t.state, "config": t.config, "wall_s": clock.wall.get(t.number),
            "build_s": m.get("build_s"), "measure_s": m.get("measure_s"), "accuracy_s": m.get("accuracy_s"),
            "overhead_s": clock.wall[t.number] - inside if measured else None,
            "throughput": m.get("throughput"), "latency_ms_p95": m.get("latency_ms_p95"),
            "speedup": result.speedup(t) if t.state == "COMPLETE" else None,
        })

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    def table() -> None:
        print(f"{'trial':>5} {'state':<9} {'configuration (baseline knobs omitted)':<80} {'wall s':>7} {'build s':>7} "
              f"{'meas s':>7} {'acc s':>6} {'ovh s':>6} {'samples/s':>10} {'speedup':>8}")
        for r in rows:
            cfg = describe(r["config"])
            print(f"{r['trial']:>5} {r['state']:<9} {cfg:<80} {fmt(r['wall_s']):>7} {fmt(r['build_s']):>7} "
                  f"{fmt(r['measure_s']):>7} {fmt(r['accuracy_s']):>6} {fmt(r['overhead_s']):>6} "
                  f"{fmt(r['throughput'], ',.0f'):>10} {fmt(r['speedup']):>8}")

    if print_trials:
        table()
    overheads = [r["overhead_s"] for r in rows if r["overhead_s"] is not None]
    best = result.best
    summary = {
        "trials": len(result.trials), "total_wall_s": total_s,
        "mean_overhead_s_per_measured_trial": sum(overheads) / len(overheads) if overheads else None,
        "best_trial": best.number if best else None, "best_config": best.config if best else None,
        "best_speedup": result.speedup(best) if best else None,
        "options": options, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows,
    }
    print(f"{options or 'warm'}: {total_s:.1f} s for {len(result.trials)} trials; mean orchestration overhead "
          f"{fmt(summary['mean_overhead_s_per_measured_trial'])} s per measured trial; best trial "
          f"{summary['best_trial']} at {fmt(summary['best_speedup'])}x the reference throughput", flush=True)
    return summary


if __name__ == "__main__":
    main()
