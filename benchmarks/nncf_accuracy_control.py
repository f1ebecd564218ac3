"""Does NNCF's accuracy-controlled quantization earn a value of the quantization knob?

    python benchmarks/nncf_accuracy_control.py [--pipelines digits_cnn text_transformer] [--max-drop 0.01 0.001]

Per pipeline, on the OpenVINO IR the `openvino` runtime builds: f32 (the reference), plain
`nncf.quantize` (what static_int8 on openvino does), and `nncf.quantize_with_accuracy_control` with
each --max-drop (judged by the pipeline's own `evaluate`; layers are reverted to float until the drop
is met). Reports the time to quantize, the metric drop, how many layers stayed float, and latency at
batch 1 and 32 timed interleaved in one run. Writes benchmarks/results/nncf_accuracy_control.json.
Accuracy control can only earn its place where plain int8 misses a drop target that a partly-float
model meets while staying faster than f32.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

from autoopt.trial.accuracy import candidate_accuracy, reference_accuracy
from autoopt.trial.build import calibration_batches
from autoopt.machine import cpu_description
from autoopt.pipeline import load_pipeline
from autoopt.runtimes import openvino as ov_runtime
from autoopt.runtimes.base import has_attention
from common import report, time_interleaved

BATCHES = (1, 32)


def variants(pipeline, max_drops: list[float]) -> list[dict]:
    import nncf

    model = pipeline.build_model().eval()
    converted, names, spec = ov_runtime._convert(model, pipeline.make_inputs(2))
    batches = calibration_batches(pipeline)
    calibration = nncf.Dataset(batches, lambda batch: {n: t.numpy() for n, t in zip(names, batch)})
    preset = nncf.ModelType.TRANSFORMER if has_attention(op.get_type_name() for op in converted.get_ops()) else None
    core = ov_runtime._core()

    def compiled(ir):
        return core.compile_model(ir, "CPU", ov_runtime.properties(2, "fp32"))

    def validate(compiled_model, _items) -> float:  # the pipeline's metric over its own evaluation data
        return float(pipeline.evaluate(ov_runtime.predictor(compiled_model, spec)))

    out = [{"name": "OpenVINO f32", "ir": converted, "quantize_s": 0.0}]
    started = time.perf_counter()
    plain = nncf.quantize(converted.clone(), calibration, model_type=preset, subset_size=len(batches))
    out.append({"name": "nncf.quantize (static_int8)", "ir": plain, "quantize_s": time.perf_counter() - started})
    for drop in max_drops:
        started = time.perf_counter()
        try:
            controlled = nncf.quantize_with_accuracy_control(
                converted.clone(), calibration, nncf.Dataset([None]), validate, max_drop=drop,
                drop_type=nncf.DropType.ABSOLUTE, model_type=preset, subset_size=len(batches))
        except Exception as exc:  # noqa: BLE001 - a finding for the table
            out.append({"name": f"accuracy control, max drop {drop:g}", "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        out.append({"name": f"accuracy control, max drop {drop:g}", "ir": controlled,
                    "quantize_s": time.perf_counter() - started})
    for v in out:
        if "ir" in v:
            v["fake_quantize_ops"] = sum(op.get_type_name() == "FakeQuantize" for op in v["ir"].get_ops())
            v["predict"] = ov_runtime.predictor(compiled(v["ir"]), spec)
    return out


def run(name: str, max_drops: list[float], rounds: int) -> dict:
    print(f"\n== {name}", flush=True)
    pipeline = load_pipeline(name)
    reference = reference_accuracy(pipeline)
    rows = variants(pipeline, max_drops)
    live = [r for r in rows if "predict" in r]
    for batch in BATCHES:
        timed = time_interleaved([{"predict": r["predict"]} for r in live], pipeline.make_inputs(batch), rounds)
        for i, r in enumerate(live):
            r.setdefault("latency", {})[batch] = timed[i]
    for r in live:
        r["accuracy_drop"] = reference - candidate_accuracy(pipeline, r.pop("predict"))
        r.pop("ir")
        for batch in BATCHES:
            r["latency"][batch]["speedup_vs_f32"] = live[0]["latency"][batch]["p50_ms"] / r["latency"][batch]["p50_ms"]
    return {"pipeline": name, "reference_accuracy": reference, "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['pipeline']} (reference accuracy {result['reference_accuracy']:.4f}; interleaved, 2 threads)")
    head = (f"{'variant':<34} {'quantize s':>10} {'int8 ops':>8} {'drop':>8} {'bs1 ms':>7} {'x f32':>6} "
            f"{'bs32 ms':>8} {'x f32':>6}")
    print(head + "\n" + "-" * len(head))
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['name']:<34} failed: {r['error']}")
            continue
        one, many = r["latency"][1], r["latency"][32]
        print(f"{r['name']:<34} {r['quantize_s']:>10.1f} {r['fake_quantize_ops']:>8} {r['accuracy_drop']:>+8.4f} "
              f"{one['p50_ms']:>7.2f} {one['speedup_vs_f32']:>5.2f}x {many['p50_ms']:>8.2f} {many['speedup_vs_f32']:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", nargs="+", default=["digits_cnn", "text_transformer"])
    parser.add_argument("--max-drop", nargs="+", type=float, default=[0.01, 0.001])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    print(f"CPU: {cpu_description()}", flush=True)
    results = [run(name, args.max_drop, args.rounds) for name in args.pipelines]
    report("nncf_accuracy_control", results, print_table)


if __name__ == "__main__":
    main()
