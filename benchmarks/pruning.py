"""Does pruning pay once distillation recovers what it takes?

    python benchmarks/pruning.py [--pipelines digits_cnn text_transformer] [--runtime onnxruntime]
                                 [--batch 32] [--amounts 0.25 0.5 0.75] [--steps 0 200 1000] [--rounds 10]

Per pipeline: pruning amount x method (width = `structured`, `depth` where the model has repeated
blocks) x distill_steps, each built the way a trial builds it (autoopt.trial.build.build_candidate) on
one runtime at one batch size. Reports the accuracy drop against the unpruned model, the speedup over
the unpruned model on the same runtime and batch (every variant timed interleaved in one run) and the
distillation seconds (students are trained here, not taken from autoopt's cache). Writes
benchmarks/results/pruning.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from autoopt import knobs
from autoopt.trial.accuracy import candidate_accuracy, reference_accuracy
from autoopt.cache import cache_dir
from autoopt.trial.build import build_candidate
from autoopt.errors import Unsupported
from autoopt.pipeline import load_pipeline
from common import report, time_interleaved

METHODS = {"width": "structured", "depth": "depth"}


def fresh_students() -> None:
    """A cache of its own for distilled students (so that distill_s is measured), sharing the pipelines' weights."""
    weights, root = cache_dir("weights"), tempfile.mkdtemp(prefix="autoopt-pruning-bench-")
    os.symlink(weights, os.path.join(root, "weights"))
    os.environ["AUTOOPT_CACHE_DIR"] = root


def build(pipeline, config: dict, batch: int, threads: int, work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    try:
        runtime, prepared, ctx, build_s = build_candidate(pipeline, config, "cpu", threads, work, pipeline.make_inputs(batch))
    except Unsupported as exc:
        return {"unsupported": str(exc)}
    predict = runtime.load(prepared, config, ctx).predict
    return {"predict": predict, "build_s": build_s, "distill_s": ctx.report.get("distill_s", 0.0),
            "accuracy": candidate_accuracy(pipeline, predict), "note": "; ".join(ctx.notes) or None}


def run(name: str, args, threads: int) -> dict:
    print(f"\n== {name}", flush=True)
    pipeline = load_pipeline(name)
    base = {**knobs.reference_config(), "compile_mode": args.runtime, "batch_size": args.batch, "threads": threads}
    work = tempfile.mkdtemp(prefix=f"pruning-{name}-")
    rows = [{"method": "-", "amount": 0.0, "steps": 0, **build(pipeline, base, args.batch, threads, f"{work}/base")}]
    for method, value in METHODS.items():
        for amount in args.amounts:
            for steps in args.steps:
                config = {**base, "pruning_method": value, "pruning_amount": amount, "distill_steps": steps}
                row = {"method": method, "amount": amount, "steps": steps,
                       **build(pipeline, config, args.batch, threads, f"{work}/{method}-{amount}-{steps}")}
                print(f"  {method} {amount:g} steps {steps}: "
                      + (f"accuracy {row['accuracy']:.4f}, distill {row['distill_s']:.1f} s" if "predict" in row
                         else f"unsupported: {row['unsupported']}"), flush=True)
                rows.append(row)
                if "unsupported" in row:
                    break
            if rows[-1].get("unsupported") and "drops no block" not in rows[-1]["unsupported"]:
                break  # the model cannot be pruned this way at all
    live = [r for r in rows if "predict" in r]
    torch.set_num_threads(threads)
    timed = time_interleaved([{"predict": r["predict"], "threads": threads} for r in live],
                             pipeline.make_inputs(args.batch), args.rounds)
    for i, r in enumerate(live):
        r.update(timed[i])
        r["speedup"] = timed[0]["p50_ms"] / timed[i]["p50_ms"]
        r["accuracy_drop"] = rows[0]["accuracy"] - r["accuracy"]
        del r["predict"]
    return {"pipeline": name, "runtime": args.runtime, "batch": args.batch, "threads": threads,
            "reference_accuracy": reference_accuracy(pipeline), "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['pipeline']} on {result['runtime']}, batch {result['batch']}, {result['threads']} threads "
          f"(unpruned accuracy {result['rows'][0]['accuracy']:.4f})")
    print("| method | amount | distill_steps | accuracy drop | speedup | p50 ms | distill s |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "unsupported" in r:
            print(f"| {r['method']} | {r['amount']:g} | {r['steps']} | unsupported: {r['unsupported'][:80]} | | | |")
            continue
        print(f"| {r['method']} | {r['amount']:g} | {r['steps']} | {r['accuracy_drop']:+.4f} | {r['speedup']:.2f}x | "
              f"{r['p50_ms']:.2f} | {r['distill_s']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", default=["digits_cnn", "text_transformer"])
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 200, 1000])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    fresh_students()
    threads = torch.get_num_threads()
    results = [run(name, args, threads) for name in args.pipelines]
    report("pruning", results, print_table, runtime=args.runtime, batch=args.batch)


if __name__ == "__main__":
    main()
