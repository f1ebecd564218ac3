"""The default search's winner against the plain runtimes a user would try instead.

    python benchmarks/vs_runtimes.py [--pipelines digits_cnn text_transformer] [--trials 20]
                                     [--target-latency 100ms] [--rounds 15]

Per pipeline: `autoopt.search` with the default space and targets (the README's main command: 20
trials, --target-latency 100ms, accuracy drop <= 1%) into a temporary MLflow store. Then, in this one
process, the winner is rebuilt from its configuration the way its trial built it and timed interleaved
at the winner's batch size against what a user gets without autoopt:
- PyTorch eager fp32 (torch's default threads),
- ONNX Runtime: the model exported with torch.onnx.export, an InferenceSession with every graph
  optimization (ORT_ENABLE_ALL) and its default threads,
- OpenVINO: `convert_model` from the module and `compile_model(model, "CPU")` with its defaults (it
  picks precision and threads itself; what it picked is printed).
Accuracy of every row is the pipeline's metric on its own outputs. Prints the CPU and a table per
pipeline, and writes benchmarks/results/vs_runtimes.json. The goal (issue 13): the winner at least
1.0x the best plain runtime, with the accuracy target met.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

import autoopt
from autoopt import knobs
from autoopt.trial.accuracy import candidate_accuracy
from autoopt.trial.build import build_candidate
from autoopt.machine import cpu_description
from autoopt.pipeline import load_pipeline
from autoopt.runtimes import onnxruntime as ort_runtime
from autoopt.runtimes import openvino as ov_runtime
from autoopt.runtimes.base import flattened, torch_predictor
from common import measured_rows, print_rows, report, time_interleaved


def search(name: str, args) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as store:
        result = autoopt.search(name, trials=args.trials, target_latency=args.target_latency, seed=args.seed,
                                tracking_uri=str(Path(store) / "mlruns"))
    best = result.best
    states = [t.state.value for t in result.trials]
    return {
        "wall_s": time.perf_counter() - started, "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
        "winner": None if best is None else {
            "config": best.config, "describe": knobs.describe(best.config), "number": best.number,
            "search_throughput": best.metrics["throughput"], "search_accuracy_drop": best.metrics.get("accuracy_drop"),
            "search_speedup": result.speedup(best)},
        "reference_accuracy": result.reference_accuracy,
    }


def winner_variant(pipeline, config: dict, workdir: str) -> dict:
    inputs = pipeline.make_inputs(config["batch_size"])
    runtime, prepared, ctx, _ = build_candidate(pipeline, config, "cpu", config["threads"], workdir, inputs)
    built = runtime.load(prepared, config, ctx)
    return {"name": "autoopt: the search's winner", "predict": built.predict, "threads": config["threads"],
            "chose": {"configuration": knobs.describe(config)}}


def plain_variants(pipeline, workdir: str) -> list[dict]:
    import onnxruntime
    import openvino

    model = pipeline.build_model().eval()
    example = pipeline.make_inputs(2)
    eager = {"name": "PyTorch eager fp32", "predict": torch_predictor(model, torch.float32, "cpu"),
             "threads": knobs.REGISTRY["threads"].baseline}

    path = str(Path(workdir) / "plain.onnx")
    names, spec = ort_runtime.export_onnx(model, example, path)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ort = {"name": "ONNX Runtime, all graph optimizations", "predict": ort_runtime.predictor(session, names, spec)}

    flat, _, spec = flattened(model, example)
    with torch.no_grad():
        converted = openvino.convert_model(flat, example_input=example)
    compiled = ov_runtime._core().compile_model(converted, "CPU")
    chosen = {key: str(compiled.get_property(key)) for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS",
                                                               "PERFORMANCE_HINT")}
    ov = {"name": "OpenVINO compile_model defaults", "predict": ov_runtime.predictor(compiled, spec), "chose": chosen}
    return [eager, ort, ov]


def run(name: str, args) -> dict:
    print(f"\n== {name}: default search, {args.trials} trials, target latency {args.target_latency}", flush=True)
    found = search(name, args)
    winner = found["winner"]
    if winner is None:
        print("  no feasible trial: nothing to compare", flush=True)
        return {"pipeline": name, "search": found, "rows": []}
    print(f"  {found['wall_s']:.0f} s; winner #{winner['number']}: {winner['describe']}", flush=True)
    pipeline = load_pipeline(name)
    pipeline.build_model()
    batch = winner["config"]["batch_size"]
    with tempfile.TemporaryDirectory() as workdir:
        variants = [winner_variant(pipeline, winner["config"], workdir)] + plain_variants(pipeline, workdir)
        timed = time_interleaved(variants, pipeline.make_inputs(batch), args.rounds)
        torch.set_num_threads(knobs.REGISTRY["threads"].baseline)
        rows = measured_rows(variants, timed, batch, lambda predict: candidate_accuracy(pipeline, predict))
    reference_accuracy = rows[1].get("accuracy")  # eager fp32: the model itself
    best_plain = max((r for r in rows[1:] if "throughput" in r), key=lambda r: r["throughput"])
    for r in rows:
        if "throughput" in r:
            r["accuracy_drop"] = reference_accuracy - r["accuracy"]
            r["vs_best_plain"] = r["throughput"] / best_plain["throughput"]
    return {"pipeline": name, "batch_size": batch, "search": found, "rows": rows, "best_plain": best_plain["name"],
            "winner_vs_best_plain": rows[0].get("vs_best_plain"),
            "accuracy_target_met": rows[0].get("accuracy_drop", 1.0) <= 0.01}


def print_table(result: dict) -> None:
    if not result["rows"]:
        print(f"\n{result['pipeline']}: no feasible trial")
        return
    s = result["search"]
    print(f"\n{result['pipeline']} at batch {result['batch_size']} (search: {s['wall_s']:.0f} s, {s['complete']} complete, "
          f"{s['pruned']} pruned; timed interleaved in one run)")
    print_rows(result["rows"], {"p50 ms": lambda r: f"{r['p50_ms']:.2f}", "p95 ms": lambda r: f"{r['p95_ms']:.2f}",
                                "samples/s": lambda r: f"{r['throughput']:,.0f}",
                                "vs best plain": lambda r: f"{r['vs_best_plain']:.2f}x",
                                "drop": lambda r: f"{r['accuracy_drop']:+.4f}"})
    verdict = "meets" if result["winner_vs_best_plain"] >= 1.0 and result["accuracy_target_met"] else "MISSES"
    print(f"winner vs the best plain runtime ({result['best_plain']}): {result['winner_vs_best_plain']:.2f}x, accuracy "
          f"target {'met' if result['accuracy_target_met'] else 'MISSED'}: {verdict} the goal (>= 1.0x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", nargs="+", default=["digits_cnn", "text_transformer"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--target-latency", default="100ms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("autoopt").setLevel(logging.WARNING)
    print(f"CPU: {cpu_description()}", flush=True)
    results = [run(name, args) for name in args.pipelines]
    report("vs_runtimes", results, print_table, args=vars(args))


if __name__ == "__main__":
    main()
