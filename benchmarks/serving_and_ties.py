"""Issue 28 on the real default search: serving memory per candidate, a tie broken as a user would, a memory
target under the winner's serving memory, and the interleaved reference against the reference timed alone.

    python benchmarks/serving_and_ties.py [--trials 20]

1. The README's search (digits_cnn, --target-latency 100ms --target-memory 1GB): the re-measured rows with
   their per-round spread, the tie (when there is one), the serving memory of every feasible trial.
2. The winner and the fastest re-measured trial (the runner-up when the winner is the fastest) exported and
   re-timed with `autoopt bench`'s code in fresh processes, alternately, REPEATS times each.
3. The same search with --target-memory halfway between the winner's serving memory and the smallest one seen:
   what it picks instead, and the reasons of the trials the target pruned.
4. The reference timed alone and interleaved with the top trials (the end-of-search `remeasure` task in a fresh
   worker each time), alternately, REPEATS times each: the reference's throughput both ways.
Writes benchmarks/results/serving_and_ties.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import autoopt
from autoopt.knobs import describe
from autoopt.machine import available_cores, cpu_description, cpu_info
from autoopt.trial.protocol import RemeasureRequest
from autoopt.report.results import TrialState
from autoopt.bundle.retime import retime
from autoopt.runtimes import format_for
from autoopt.trial.worker import Worker

REPEATS = 3
TARGETS = {"target_latency": "100ms", "max_accuracy_drop": "1%"}


def search(tmp: Path, trials: int, study: str, target_memory: str) -> autoopt.SearchResult:
    return autoopt.search("digits_cnn", trials=trials, seed=0, study=study, target_memory=target_memory,
                          tracking_uri=str(tmp / "store"), **TARGETS)


def rows(result) -> list[dict]:
    out = []
    for t in result.trials:
        if t.state != TrialState.COMPLETE:
            continue
        r = t.remeasured or {}
        out.append({"trial": t.number, "config": describe(t.config), "feasible": t.feasible,
                    "serving_rss_mb": t.figures.get("serving_rss_mb"), "throughput": t.figures["throughput"],
                    "latency_ms_p95": t.figures["latency_ms_p95"], "remeasured": bool(r),
                    "speedup": r.get("speedup"), "speedup_iqr": [r.get("speedup_q25"), r.get("speedup_q75")]})
    return out


def print_rows(title: str, table: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'trial':>5} {'re-meas.':>8} {'samples/s':>10} {'p95 ms':>7} {'speedup (IQR)':>20} {'serving MB':>10}  configuration")
    for r in table:
        iqr = f"{r['speedup']:.2f} ({r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f})" if r["remeasured"] else "-"
        serving = f"{r['serving_rss_mb']:,.0f}" if r["serving_rss_mb"] else "-"
        print(f"{r['trial']:>5} {'yes' if r['remeasured'] else '':>8} {r['throughput']:>10,.0f} "
              f"{r['latency_ms_p95']:>7.2f} {iqr:>20} {serving:>10}  {r['config']}{'' if r['feasible'] else ' (infeasible)'}")


def shipped_against_fastest(result, tmp: Path) -> dict:
    """The winner and the fastest re-measured other trial, exported and re-timed alternately in fresh processes."""
    again = sorted((t for t in result.trials if t.remeasured and t.feasible and not t.reference),
                   key=lambda t: -t.remeasured["throughput"])
    best = result.best
    other = next((t for t in again if t is not best and format_for(t.config["compile_mode"])), None)
    if other is None or format_for(best.config["compile_mode"]) is None:
        return {"skipped": "the winner or its rival runs a runtime no format ships"}
    bundles = {}
    for t in (best, other):
        out = tmp / f"bundle-{t.number}"
        autoopt.export(result.study_name, trial=t.number, out=str(out), tracking_uri=str(tmp / "store"))
        bundles[t.number] = out
    timed: dict[int, list] = {n: [] for n in bundles}
    for _ in range(REPEATS):
        for n, path in bundles.items():
            timed[n].append(retime(path, processes=1))
    figures = {}
    for n, runs in timed.items():
        figures[n] = {"throughput": [r["throughput"] for r in runs], "latency_ms_p95": [r["latency_ms_p95"] for r in runs],
                      "serving_rss_mb": statistics.median(r["serving_rss_mb"] for r in runs),
                      "batch": runs[0]["batch"], "format": runs[0]["format"]}
    return {"winner": best.number, "rival": other.number, "tie": result.tie.describe() if result.tie else None,
            "fresh_processes": figures}


def interleave_check(result, tmp: Path) -> dict:
    """The reference's throughput timed alone and interleaved with the top trials, each in a fresh worker."""
    reference = result.reference
    top = [t for t in result.trials if t.remeasured and not t.reference][:3]
    base = RemeasureRequest(device="cpu", threads=available_cores(), min_time_s=1.0,
                            pipeline=autoopt.load_pipeline("digits_cnn").source, rounds=10, round_time_s=0.2)
    figures: dict[str, list] = {"alone": [], "interleaved": []}
    for i in range(REPEATS):
        for how, configs in (("alone", [reference.config]), ("interleaved", [reference.config, *[t.config for t in top]])):
            work = tmp / f"remeasure-{how}-{i}"
            work.mkdir()
            worker = Worker(str(tmp), reuse=False)
            try:
                done = worker.run(base.for_trial(configs=configs), str(work), 900)
            finally:
                worker.close()
            if done.state != TrialState.COMPLETE:
                raise SystemExit(f"remeasure failed: {done.reason}")
            ref = done.metrics["figures"][0]
            figures[how].append({"throughput": ref["throughput"], "q25": ref["throughput_q25"], "q75": ref["throughput_q75"],
                                 "settle_ms_max": done.metrics["settle_ms_max"]})
    return {"configs": [describe(t.config) for t in top], "reference": describe(reference.config), **figures}


def interleave_summary(check: dict) -> dict:
    """The reference alone against interleaved. On a shared 2-core VM its 2-thread figure flips between two
    levels (about 600 and 1,100 samples/s on the Zen 4 CI machine, steal time 0) for seconds at a time, inside
    one process and across processes, whatever runs beside it: a median of a few runs then says which level
    the runs happened to meet. Runs are grouped by level (split at the geometric middle of their range when it
    spans 1.5x or more) and each level compared on its own."""
    runs = [(how, f["throughput"]) for how in ("alone", "interleaved") for f in check[how]]
    low, high = min(x for _, x in runs), max(x for _, x in runs)
    split = (low * high) ** 0.5 if high / low >= 1.5 else None
    levels = {}
    for name, keep in (("slow", lambda x: x < split), ("fast", lambda x: x >= split)) if split else (("all", lambda x: True),):
        alone = [x for how, x in runs if how == "alone" and keep(x)]
        mixed = [x for how, x in runs if how == "interleaved" and keep(x)]
        levels[name] = {"alone": alone, "interleaved": mixed,
                        "ratio": statistics.median(mixed) / statistics.median(alone) if alone and mixed else None}
    text = "; ".join(f"{name} level: alone {len(v['alone'])} run(s), interleaved {len(v['interleaved'])}, "
                     + (f"interleaved / alone {v['ratio']:.3f}" if v["ratio"] else "not met in both")
                     for name, v in levels.items())
    return {"split": split, "levels": levels, "text": text}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autoopt-bench-ties-"))
    first = search(tmp, args.trials, "readme", "1GB")
    table = rows(first)
    print_rows(f"1. README search: best trial {first.best.number}"
               + (f"; {first.tie.describe()}" if first.tie else "; no tie"), table)
    duel = shipped_against_fastest(first, tmp)
    if "fresh_processes" in duel:
        print(f"\n2. Exported and re-timed alternately, {REPEATS} fresh processes each (samples/s; p95 ms; serving MB):")
        for n, f in duel["fresh_processes"].items():
            role = "winner" if n == duel["winner"] else "rival"
            print(f"  trial {n} ({role}, {f['format']}, batch {f['batch']}): "
                  f"{' / '.join(f'{x:,.0f}' for x in f['throughput'])}; "
                  f"{' / '.join(f'{x:.2f}' for x in f['latency_ms_p95'])}; {f['serving_rss_mb']:,.0f}")
    feasible = [r for r in table if r["feasible"] and r["serving_rss_mb"]]
    winner_mb = first.best.figures["serving_rss_mb"]
    smallest = min(r["serving_rss_mb"] for r in feasible)
    constrained = None
    if smallest < winner_mb * 0.9:
        target_mb = round((smallest + winner_mb) / 2)
        second = search(tmp, args.trials, "tight", f"{target_mb}MB")
        pruned = [{"trial": t.number, "config": describe(t.config), "reason": t.reason} for t in second.trials
                  if t.state == TrialState.PRUNED and (t.reason or "").startswith("serving memory")]
        best = second.best
        constrained = {"target_memory_mb": target_mb, "best": None if best is None else
                       {"trial": best.number, "config": describe(best.config), "throughput": best.figures["throughput"],
                        "serving_rss_mb": best.figures.get("serving_rss_mb")}, "pruned_for_memory": pruned,
                       "rows": rows(second)}
        print(f"\n3. --target-memory {target_mb}MB (first winner serves in {winner_mb:,.0f} MB): best "
              + (f"trial {best.number} ({describe(best.config)}), {best.figures['throughput']:,.0f} samples/s, "
                 f"serving {best.figures['serving_rss_mb']:,.0f} MB" if best else "none"))
        for p in pruned[:5]:
            print(f"  pruned trial {p['trial']} ({p['config']}): {p['reason']}")
    check = interleave_check(first, tmp)
    print(f"\n4. The reference ({check['reference']}) alone and interleaved with {len(check['configs'])} trials, "
          f"{REPEATS} fresh workers each (samples/s, median [IQR of its rounds]):")
    for how in ("alone", "interleaved"):
        print(f"  {how:<12} " + "  ".join(f"{f['throughput']:,.0f} [{f['q25']:,.0f}-{f['q75']:,.0f}]" for f in check[how])
              + f"   longest wait for quiet threads {max(f['settle_ms_max'] for f in check[how]):.0f} ms")
    summary = interleave_summary(check)
    print("  " + summary["text"])
    print(f"\nCPU: {cpu_description()}")
    out = Path(__file__).parent / "results" / "serving_and_ties.json"
    out.write_text(json.dumps({"machine": cpu_info(), "readme_search": table, "tie": first.tie.describe() if first.tie else None,
                               "shipped_vs_rival": duel, "memory_target": constrained, "interleave": check,
                               "interleave_summary": summary}, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
