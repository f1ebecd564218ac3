"""How good is the search, and where does its time go? Against the exhaustive grid of a fixed space.

    python benchmarks/search_quality.py [--pipelines digits_cnn,text_transformer] [--seeds 0,1,2]
                                        [--budgets 5,10,20] [--samplers tpe,tpe-cold,gp-cold]

1. The grid: every combination of the pipeline's fixed, OpenVINO-inclusive space
   (benchmarks/spaces/search_<pipeline>.yaml) once, with `--sampler grid`; cached in
   benchmarks/results/grid_<pipeline>_<hash of the space>.json (delete it to re-run).
   The optimum is the highest throughput among the grid's feasible configurations.
2. The search: per sampler and seed, one run of max(budgets) trials ("-cold": without the warm start,
   to see the sampler's own work; the warm start alone often holds the optimum); the winner at budget b is the
   best feasible trial among the first b (the first b trials of a longer run are exactly a b-trial run
   with that seed). Regret = 1 - grid throughput of the winner's configuration / grid optimum, so both
   sides come from the same (grid) measurements and run-to-run noise does not enter.
3. Also per run: trials until the first feasible one, trials until the best so far reaches 95% of the
   optimum, the trials spent on a batch size predicted more than twice over the target (its batch times
   the fastest per-sample p95 measured before it: issue 17's measure), the trials screened out, and the
   wall-time split: build, measurement and
   accuracy inside the workers, sampling (the sampler's calls), tracking (the MLflow listener) and the
   rest (worker start-up, bookkeeping).
Prints a table and writes benchmarks/results/search_quality.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import autoopt
from autoopt import knobs
from autoopt.machine import cpu_description, cpu_info
from autoopt.study.sampler import ValidConfigSampler
from autoopt.report.tracking import Tracker

HERE = Path(__file__).parent
TARGET_LATENCY = {"digits_cnn": "100ms", "text_transformer": "20ms"}


class Timer:
    """Adds up the wall time spent in a method, patched on its class for the run."""

    def __init__(self, cls, name: str):
        self.total, self.cls, self.name, self.original = 0.0, cls, name, getattr(cls, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - started

        setattr(cls, name, timed)

    def restore(self) -> None:
        setattr(self.cls, self.name, self.original)


def key(config: dict) -> str:
    return json.dumps(knobs.canonical(config), sort_keys=True)


def grid(pipeline: str, space: str, store: str) -> dict:
    digest = hashlib.sha256(Path(space).read_bytes()).hexdigest()[:8]
    cache = HERE / "results" / f"grid_{pipeline}_{digest}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from autoopt.study.space import load_space

    size = 1
    for domain in load_space(space, "cpu").domains.values():
        size *= len(domain.choices)
    started = time.perf_counter()
    result = autoopt.search(pipeline, space=space, sampler="grid", trials=size + 1, seed=0, tracking_uri=store,
                            target_latency=TARGET_LATENCY[pipeline], remeasure_top=0,
                            early_stop=False)  # every combination measured fully: nothing screened out
    figures = {}
    for t in result.trials:
        if t.state == "COMPLETE":
            figures[key(t.config)] = {"throughput": t.metrics["throughput"], "feasible": t.feasible}
    feasible = [f["throughput"] for f in figures.values() if f["feasible"]]
    data = {"pipeline": pipeline, "space": space, "combinations": size, "figures": figures,
            "optimum": max(feasible) if feasible else None, "wall_s": time.perf_counter() - started}
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps(data, indent=2))
    return data


def search_run(pipeline: str, space: str, store: str, variant: str, seed: int, trials: int) -> dict:
    sampler, cold = variant.removesuffix("-cold"), variant.endswith("-cold")
    timers = [Timer(ValidConfigSampler, "sample_relative"), Timer(Tracker, "trial_started"),
              Timer(Tracker, "trial_finished")]
    started = time.perf_counter()
    try:
        result = autoopt.search(pipeline, space=space, sampler=sampler, trials=trials, seed=seed, tracking_uri=store,
                                target_latency=TARGET_LATENCY[pipeline], remeasure_top=0, warm_start=not cold)
    finally:
        for timer in timers:
            timer.restore()
    wall = time.perf_counter() - started
    inside = {k: sum(t.metrics.get(k, 0.0) for t in result.trials) for k in ("build_s", "measure_s", "accuracy_s")}
    return {
        "trials": [{"number": t.number, "config": t.config, "feasible": t.feasible, "state": t.state,
                    "throughput": t.metrics.get("throughput"), "screened": bool(t.metrics.get("screened")),
                    "p95_ms": t.metrics.get("latency_ms_p95") or t.metrics.get("screen_latency_ms_p95"),
                    "curve": t.curve} for t in result.trials],
        "split_s": {**inside, "sampler_s": timers[0].total, "tracking_s": timers[1].total + timers[2].total,
                    "other_s": wall - sum(inside.values()) - timers[0].total - timers[1].total - timers[2].total},
        "wall_s": wall,
    }


def over_twice(trials: list[dict], target_ms: float) -> int:
    """Trials whose batch size times the fastest per-sample p95 measured before them is more than twice
    the latency target (issue 17: at most 10% of a search's trials)."""
    count, fastest = 0, None
    for t in sorted(trials, key=lambda t: t["number"]):
        if fastest is not None and t["config"]["batch_size"] * fastest > 2 * target_ms:
            count += 1
        if t["p95_ms"]:
            fastest = min(fastest or float("inf"), t["p95_ms"] / t["config"]["batch_size"])
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", default="digits_cnn,text_transformer")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="5,10,20")
    parser.add_argument("--samplers", default="tpe,tpe-cold,gp-cold")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    rows, runs = [], []
    print(f"CPU: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in args.pipelines.split(","):
            space = str(HERE / "spaces" / f"search_{pipeline}.yaml")
            g = grid(pipeline, space, os.path.join(tmp, f"grid-{pipeline}"))
            print(f"{pipeline}: grid of {g['combinations']} combinations, optimum {g['optimum']:,.0f} samples/s "
                  f"({g['wall_s']:.0f} s)", flush=True)
            for sampler in args.samplers.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    run = search_run(pipeline, space, os.path.join(tmp, f"{pipeline}-{sampler}-{seed}"), sampler, seed,
                                     max(budgets))
                    runs.append({"pipeline": pipeline, "sampler": sampler, "seed": seed, **run})
                    first = next((t["number"] + 1 for t in run["trials"] if t["feasible"]), None)
                    best_so_far, to_95 = 0.0, None
                    for t in run["trials"]:
                        if t["feasible"] and key(t["config"]) in g["figures"]:
                            best_so_far = max(best_so_far, g["figures"][key(t["config"])]["throughput"])
                        if to_95 is None and best_so_far >= 0.95 * g["optimum"]:
                            to_95 = t["number"] + 1
                    target_ms = float(TARGET_LATENCY[pipeline].removesuffix("ms"))
                    over = over_twice(run["trials"], target_ms)
                    for budget in budgets:
                        done = [t for t in run["trials"][:budget] if t["feasible"] and key(t["config"]) in g["figures"]]
                        best = max(done, key=lambda t: g["figures"][key(t["config"])]["throughput"], default=None)
                        grid_thr = g["figures"][key(best["config"])]["throughput"] if best else 0.0
                        rows.append({"pipeline": pipeline, "sampler": sampler, "seed": seed, "budget": budget,
                                     "share_of_optimum": grid_thr / g["optimum"], "regret": 1 - grid_thr / g["optimum"],
                                     "first_feasible_trial": first, "trials_to_95": to_95,
                                     "over_2x_target": over, "screened": sum(t["screened"] for t in run["trials"]),
                                     "moved_by_curve": sum(bool(t["curve"]) for t in run["trials"]),
                                     "winner": knobs.describe(best["config"]) if best else None})
                    print(f"  {sampler} seed {seed}: {run['wall_s']:.0f} s", flush=True)

    print(f"\n{'pipeline':<17} {'sampler':<8} {'seed':>4} {'budget':>6} {'of optimum':>10} {'regret':>7} "
          f"{'1st feasible':>12} {'to 95%':>7} {'over 2x':>7} {'screened':>8} {'moved':>5}  winner")
    for r in rows:
        print(f"{r['pipeline']:<17} {r['sampler']:<8} {r['seed']:>4} {r['budget']:>6} {r['share_of_optimum']:>9.1%} "
              f"{r['regret']:>7.3f} {r['first_feasible_trial']!s:>12} {r['trials_to_95']!s:>7} {r['over_2x_target']:>7} "
              f"{r['screened']:>8} {r['moved_by_curve']:>5}  {r['winner']}")
    print(f"\n{'pipeline':<17} {'sampler':<8} {'seed':>4} {'wall s':>7} {'build':>6} {'measure':>8} {'accuracy':>9} "
          f"{'sampler':>8} {'tracking':>9} {'other':>6}")
    for r in runs:
        s = r["split_s"]
        print(f"{r['pipeline']:<17} {r['sampler']:<8} {r['seed']:>4} {r['wall_s']:>7.0f} {s['build_s']:>6.0f} "
              f"{s['measure_s']:>8.0f} {s['accuracy_s']:>9.0f} {s['sampler_s']:>8.1f} {s['tracking_s']:>9.1f} "
              f"{s['other_s']:>6.0f}")
    for sampler in args.samplers.split(","):
        for budget in budgets:
            final = [r for r in rows if r["budget"] == budget and r["sampler"] == sampler]
            print(f"{sampler}: at {budget} trials, >= 95% of the grid optimum in "
                  f"{sum(r['share_of_optimum'] >= 0.95 for r in final)}/{len(final)} runs")
    out = HERE / "results" / "search_quality.json"
    out.write_text(json.dumps({"rows": rows, "runs": runs, "machine": {**cpu_info(), "cpus": os.cpu_count(),
                                                                         "platform": platform.platform()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
