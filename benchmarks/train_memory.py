"""Training-step memory and time per checkpoint granularity (the training task's measurement).

    python benchmarks/train_memory.py [--pipeline text_transformer] [--batches 32,128,512]
                                      [--budgets 150MB,300MB,600MB] [--threads 2]

1. For each checkpoint granularity and batch size: peak memory of one step (the method autoopt uses
   on CPU: PyTorch's memory-profiler timeline; CUDA peak allocated on GPU) and the median step time
   (forward, backward, AdamW step) of 3 steps after a warm-up step. Granularities run interleaved per
   batch size, so their time ratios come from the same stretch of the run.
2. For each memory budget, the largest batch (a multiple of 8) whose step fits, without checkpointing
   and with checkpointing of every block: predicted from a line through the measured peaks, then
   confirmed by measuring the step at that batch and at 8 more.
Prints two tables and writes benchmarks/results/train_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autoopt.pipeline import load_pipeline
from autoopt.trial.training import build_step, step_peak_memory_mb
from autoopt.units import parse_memory_mb

FP32 = {"precision": "fp32", "compile_mode": "eager"}


def measure(pipeline, checkpointing: str, batch_size: int, workdir: str, steps: int = 3) -> dict:
    step, _ = build_step(pipeline, {**FP32, "checkpointing": checkpointing}, "cpu")
    batch = pipeline.make_batch(batch_size)
    step(batch)  # warm-up: allocates the optimizer state
    peak = step_peak_memory_mb(step, batch, "cpu", workdir)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - started)
    return {"peak_memory_mb": peak, "step_s": statistics.median(times)}


def peak_only(pipeline, checkpointing: str, batch_size: int, workdir: str) -> float:
    step, _ = build_step(pipeline, {**FP32, "checkpointing": checkpointing}, "cpu")
    batch = pipeline.make_batch(batch_size)
    step(batch)
    return step_peak_memory_mb(step, batch, "cpu", workdir)


def largest_fit(pipeline, checkpointing: str, budget_mb: float, points: dict, workdir: str) -> dict:
    """The largest multiple of 8 whose step peak fits `budget_mb`, confirmed by measurement."""
    b0, b1 = min(points), max(points)
    m0, m1 = points[b0], points[b1]
    slope = (m1 - m0) / (b1 - b0)
    guess = max(8, int((budget_mb - (m0 - slope * b0)) / slope) // 8 * 8)
    measured = {}

    def fits(b: int) -> bool:
        if b not in measured:
            measured[b] = peak_only(pipeline, checkpointing, b, workdir)
        return measured[b] <= budget_mb

    b = guess
    while b > 8 and not fits(b):
        b -= 8
    while fits(b + 8):
        b += 8
    fitting = b if fits(b) else 0
    return {"batch": fitting, "peak_memory_mb": measured.get(fitting), "measured": measured}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", default="text_transformer")
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--budgets", default="150MB,300MB,600MB")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.pipeline)
    found, blocks = pipeline.train_blocks(pipeline.build_model())
    granularities = ["none", *(f"every_{k}" for k in range(len(blocks), 1, -2)), "all"]
    batches = [int(b) for b in args.batches.split(",")]
    workdir = tempfile.mkdtemp(prefix="autoopt-train-memory-")
    print(f"{args.pipeline}: checkpointing wraps the blocks of {found}; {args.threads} threads; fp32, eager, AdamW")

    rows = []
    for batch_size in batches:
        for value in granularities:
            rows.append({"checkpointing": value, "batch_size": batch_size, **measure(pipeline, value, batch_size, workdir)})
            print(f"  measured {value} at batch {batch_size}", flush=True)
    base = {r["batch_size"]: r for r in rows if r["checkpointing"] == "none"}
    print(f"\n{'batch':>6} {'checkpointing':<14} {'peak MB':>9} {'vs none':>8} {'step s':>8} {'vs none':>8}")
    for r in rows:
        b = base[r["batch_size"]]
        r["memory_vs_none"] = r["peak_memory_mb"] / b["peak_memory_mb"]
        r["time_vs_none"] = r["step_s"] / b["step_s"]
        print(f"{r['batch_size']:>6} {r['checkpointing']:<14} {r['peak_memory_mb']:>9.1f} {r['memory_vs_none']:>7.2f}x "
              f"{r['step_s']:>8.3f} {r['time_vs_none']:>7.2f}x")
    falling = all(
        all(a["peak_memory_mb"] > b["peak_memory_mb"] for a, b in zip(group, group[1:]))
        for group in ([r for r in rows if r["batch_size"] == bs] for bs in batches)
    )
    print(f"peak memory falls with finer granularity at every batch size: {falling}")

    fits = []
    print(f"\n{'budget':>8} {'largest batch, none':>20} {'largest batch, all':>19} {'ratio':>6}")
    for text in args.budgets.split(","):
        budget = parse_memory_mb(text, "--budgets")
        entry = {"budget_mb": budget}
        for value in ("none", "all"):
            points = {r["batch_size"]: r["peak_memory_mb"] for r in rows if r["checkpointing"] == value}
            entry[value] = largest_fit(pipeline, value, budget, points, workdir)
        ratio = entry["all"]["batch"] / entry["none"]["batch"] if entry["none"]["batch"] else float("inf")
        fits.append(entry)
        print(f"{text:>8} {entry['none']['batch']:>20} {entry['all']['batch']:>19} {ratio:>5.2f}x", flush=True)

    out = Path(__file__).parent / "results" / "train_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "pipeline": args.pipeline, "blocks": found, "threads": args.threads, "steps": rows,
        "memory_falls_with_granularity": falling, "largest_batch": fits,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
