"""What each knob does on this machine: every knob value alone, and combinations, per bundled pipeline.

    python benchmarks/knobs.py [--pipelines digits_cnn text_transformer] [--rounds 12]

Each variant is built once (per batch size for inductor, which compiles for a shape) the way a trial
builds it, then all variants are timed interleaved: in every round each variant runs a block of
calls in turn, so machine noise hits them alike. Speedup = the reference's median call time / the
variant's, at batch 1 and at batch 32, from this one run. Accuracy drop uses the pipeline's metric.
Prints a table per pipeline and writes benchmarks/results/knobs.json.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch

from autoopt import knobs
from autoopt.trial.accuracy import candidate_accuracy
from autoopt.errors import Unsupported
from autoopt.machine import cpu_description
from autoopt.pipeline import load_pipeline
from autoopt.trial.build import build_candidate
from common import report, time_interleaved

BATCHES = (1, 32)

SINGLE = [
    {"threads": 1},
    {"precision": "bf16"},
    {"compile_mode": "torchscript"},
    {"compile_mode": "inductor"},
    {"compile_mode": "onnxruntime"},
    {"compile_mode": "onnxruntime", "graph_fusion": "none"},
    {"compile_mode": "onnxruntime", "graph_fusion": "transformer"},
    {"compile_mode": "openvino"},
    {"compile_mode": "openvino", "precision": "bf16"},
    {"quantization": "dynamic_int8"},
    {"quantization": "dynamic_int8", "quant_granularity": "per_tensor"},
    {"quantization": "static_int8"},
    {"quantization": "weight_only_int8"},
    {"pruning_amount": 0.5, "pruning_method": "l1_unstructured"},
    {"pruning_amount": 0.5, "pruning_method": "structured"},
]
COMBOS = [
    {"compile_mode": runtime, "quantization": quant, "threads": threads}
    for runtime in ("torchscript", "inductor", "onnxruntime", "openvino")
    for quant in ("none", "dynamic_int8", "static_int8", "weight_only_int8")
    for threads in (1, 2)
]


def describe(change: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in change.items()) or "reference (fp32 eager)"


def build_all(pipeline, variants: list[dict]) -> list[dict]:
    ref = knobs.reference_config()
    rows = []
    for change in variants:
        config = {**ref, **change}
        row = {"variant": describe(change), "config": config, "predict": {}, "build_s": None, "note": None}
        rows.append(row)
        if reason := knobs.conflict(config, "cpu"):
            row["note"] = f"pruned: {reason}"
            continue
        # Inductor compiles for a shape: one build per batch size; the others build once.
        per_batch = config["compile_mode"].startswith("inductor")
        try:
            for batch in BATCHES if per_batch else BATCHES[:1]:
                inputs = pipeline.make_inputs(batch)
                runtime, prepared, ctx, build_s = build_candidate(
                    pipeline, {**config, "batch_size": batch}, "cpu", config["threads"], tempfile.mkdtemp(), inputs)
                built = runtime.load(prepared, config, ctx)
                row["build_s"] = build_s if row["build_s"] is None else row["build_s"]
                for b in (BATCHES if not per_batch else (batch,)):
                    row["predict"][b] = built.predict
        except Unsupported as exc:
            row["note"] = f"unsupported: {exc}"
        except Exception as exc:  # noqa: BLE001 - a failing variant is a finding, not the end of the benchmark
            row["note"] = f"failed: {type(exc).__name__}: {exc}"[:200]
        status = row["note"] or f"{row['build_s']:.1f} s"
        print(f"  built {row['variant']}: {status}", flush=True)
    return rows


def time_all(pipeline, rows: list[dict], rounds: int) -> None:
    for batch in BATCHES:
        live = [r for r in rows if batch in r["predict"]]
        timed = time_interleaved([{"predict": r["predict"][batch], "threads": r["config"]["threads"]} for r in live],
                                 pipeline.make_inputs(batch), rounds)
        for i, r in enumerate(live):
            if "error" in timed[i]:
                r["note"] = f"failed at batch {batch}: {timed[i]['error']}"
                del r["predict"][batch]
            else:
                r.setdefault("latency", {})[batch] = timed[i]


def run(name: str, rounds: int) -> dict:
    print(f"\n== {name}")
    pipeline = load_pipeline(name)
    pipeline.build_model()  # trains on first use: keep that out of the reference's build time
    variants = [{}] + SINGLE + [c for c in COMBOS if c not in SINGLE]
    rows = build_all(pipeline, variants)
    time_all(pipeline, rows, rounds)
    torch.set_num_threads(knobs.REGISTRY["threads"].baseline)
    ref_accuracy = None
    for r in rows:
        if r["predict"]:
            try:
                r["accuracy"] = candidate_accuracy(pipeline, next(iter(r["predict"].values())))
            except Exception as exc:  # noqa: BLE001
                r["note"], r["latency"] = f"failed in evaluate: {type(exc).__name__}"[:200], {}
                continue
            ref_accuracy = r["accuracy"] if ref_accuracy is None else ref_accuracy
            r["accuracy_drop"] = ref_accuracy - r["accuracy"]
    ref = rows[0]["latency"]
    for r in rows:
        for batch, lat in r.get("latency", {}).items():
            lat["speedup"] = ref[batch]["p50_ms"] / lat["p50_ms"]
            lat["throughput"] = batch / (lat["p50_ms"] / 1e3)
        r.pop("predict")
    return {"pipeline": name, "reference_accuracy": ref_accuracy, "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['pipeline']} (reference accuracy {result['reference_accuracy']:.4f}; speedup vs fp32 eager "
          "at the same batch size, measured interleaved in one run)")
    head = f"{'variant':<62} {'build s':>7} {'bs1 ms':>7} {'bs1 x':>6} {'bs32 ms':>8} {'bs32 x':>7} {'samples/s':>9} {'drop':>7}"
    print(head + "\n" + "-" * len(head))
    for r in result["rows"]:
        lat = r.get("latency", {})
        if not lat:
            print(f"{r['variant']:<62} {r['note']}")
            continue
        cells = []
        for batch, width in ((1, 7), (32, 8)):
            one = lat.get(batch)
            cells.append(f"{one['p50_ms']:>{width}.2f} {one['speedup']:>5.2f}x" if one else f"{'-':>{width}} {'-':>6}")
        many = lat.get(32, {})
        note = f"  ({r['note']})" if r["note"] else ""
        print(f"{r['variant']:<62} {r['build_s']:>7.1f} {cells[0]} {cells[1]} {many.get('throughput', 0):>9,.0f} "
              f"{r['accuracy_drop']:>+7.4f}{note}")
    ok = [r for r in result["rows"] if r.get("latency") and r["accuracy_drop"] <= 0.01]
    for batch in BATCHES:
        best = max((r for r in ok if batch in r["latency"]), key=lambda r: r["latency"][batch]["throughput"])
        lat = best["latency"][batch]
        print(f"best at batch {batch} with drop <= 1%: {best['variant']}: {lat['throughput']:,.0f} samples/s, "
              f"{lat['speedup']:.2f}x, p95 {lat['p95_ms']:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", nargs="+", default=["digits_cnn", "text_transformer"])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"CPU: {cpu_description()}", flush=True)
    results = [run(name, args.rounds) for name in args.pipelines]
    report("knobs", results, print_table)


if __name__ == "__main__":
    main()
