"""What does stopping early save? The same trials with and without it.

    python benchmarks/early_stop.py [--pipelines digits_cnn,text_transformer]

Per bundled pipeline: every combination of its fixed space (benchmarks/spaces/<pipeline>.yaml) with
`--sampler grid`, so both runs measure the same configurations, under a latency target that about half
of the grid misses; once with early stopping (the default: a trial whose calls already take 1.5x the
target stops, one whose p95 ends over it skips the accuracy check) and once with `--no-early-stop`
(every trial timed fully and its accuracy checked). No end-of-search re-measurement in either run, so
the difference is the early stopping alone. Prints the wall time of each run, the trials stopped or
pruned for latency, the seconds the full run spent on those trials' timing and accuracy, and whether
both runs pick the same winner; writes benchmarks/results/early_stop.json.
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
from autoopt.study.space import load_space

HERE = Path(__file__).parent
TARGET_LATENCY = {"digits_cnn": "5ms", "text_transformer": "4ms"}  # about the grid's median p50 here


def run(pipeline: str, early_stop: bool, tmp: str) -> dict:
    space = str(HERE / "spaces" / f"{pipeline}.yaml")
    size = 1
    for domain in load_space(space, "cpu").domains.values():
        size *= len(domain.choices)
    started = time.perf_counter()
    result = autoopt.search(pipeline, space=space, sampler="grid", trials=size + 1, seed=0, remeasure_top=0,
                            target_latency=TARGET_LATENCY[pipeline], early_stop=early_stop,
                            tracking_uri=os.path.join(tmp, f"{pipeline}-{early_stop}"))
    wall_s = time.perf_counter() - started
    over = [t for t in result.trials if t.constraints.get("latency", 0) > 0 or (t.reason or "").startswith("latency")]
    return {
        "wall_s": wall_s, "trials": len(result.trials), "over_latency": len(over),
        "stopped_early": sum(1 for t in over if t.metrics.get("stopped_early")),
        "accuracy_checked": sum(1 for t in result.trials if "accuracy" in t.metrics),
        "over_measure_s": sum(t.metrics.get("measure_s", 0.0) for t in over),
        "over_accuracy_s": sum(t.metrics.get("accuracy_s", 0.0) for t in over),
        "winner": result.best.config if result.best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", default="digits_cnn,text_transformer")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in args.pipelines.split(","):
            full = run(pipeline, False, tmp)
            early = run(pipeline, True, tmp)
            rows.append({"pipeline": pipeline, "target_latency": TARGET_LATENCY[pipeline], "early": early, "full": full,
                         "saved_s": full["wall_s"] - early["wall_s"], "same_winner": early["winner"] == full["winner"]})
            print(f"{pipeline}: early {early['wall_s']:.0f} s, full {full['wall_s']:.0f} s", flush=True)

    print(f"\n{'pipeline':<17} {'target':>6} {'trials':>6} {'over':>5} {'stopped':>7} {'full run':>9} "
          f"{'early stop':>10} {'saved':>12} {'full: timing+acc. of over':>26}  same winner")
    for r in rows:
        e, f = r["early"], r["full"]
        print(f"{r['pipeline']:<17} {r['target_latency']:>6} {e['trials']:>6} {f['over_latency']:>5} "
              f"{e['stopped_early']:>7} {f['wall_s']:>8.1f}s {e['wall_s']:>9.1f}s "
              f"{r['saved_s']:>6.1f}s {r['saved_s'] / f['wall_s']:>4.0%} "
              f"{f['over_measure_s']:>12.1f}s + {f['over_accuracy_s']:>5.1f}s   {r['same_winner']}")
        print(f"{'':<17} winner: {describe(e['winner']) if e['winner'] else '-'}")
    out = HERE / "results" / "early_stop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
