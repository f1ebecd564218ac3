"""What the benchmarks share. Interleaved timing: every variant runs a block of calls in turn, round after
round, so that machine noise (another process, a frequency change) hits them alike and ratios hold within
one run. The closing report: the CPU, a table per pipeline and benchmarks/results/<name>.json."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from autoopt.machine import cpu_description, cpu_info
from autoopt.trial.measure import percentile

BLOCK_S = 0.03  # time per variant per round
PAUSE_S = 0.02  # between blocks: thread pools that spin after a run go idle before the next variant


def time_interleaved(variants: list[dict], inputs: tuple, rounds: int) -> dict[int, dict]:
    """variants: {"predict": callable, "threads": torch threads while it runs (None: leave them), "inputs": its own
    inputs (a variant at its own best batch size; default `inputs`)}.
    Returns {index: {"p50_ms", "p95_ms"}} for the variants that ran; a variant whose warm-up raises
    gets {"error": message} instead."""
    out: dict[int, dict] = {}
    live = []
    for i, v in enumerate(variants):  # warm-up, and the calls per block from the warm call time
        _threads(v)
        args = v.get("inputs", inputs)
        try:
            for _ in range(3):
                v["predict"](*args)
        except Exception as exc:  # noqa: BLE001 - e.g. a compiled kernel that fails at this shape
            out[i] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
            continue
        start = time.perf_counter()
        v["predict"](*args)
        live.append((i, max(1, int(BLOCK_S / max(time.perf_counter() - start, 1e-6)))))
    calls: dict[int, list[float]] = {i: [] for i, _ in live}
    for _ in range(rounds):
        for i, block in live:
            _threads(variants[i])
            predict, args = variants[i]["predict"], variants[i].get("inputs", inputs)
            for _ in range(block):
                start = time.perf_counter()
                predict(*args)
                calls[i].append((time.perf_counter() - start) * 1e3)
            time.sleep(PAUSE_S)
    for i, samples in calls.items():
        out[i] = {"p50_ms": statistics.median(samples), "p95_ms": percentile(samples, 95)}
    return out


def _threads(variant: dict) -> None:
    if variant.get("threads") is not None:
        torch.set_num_threads(variant["threads"])


def measured_rows(variants: list[dict], timed: dict[int, dict], batch: int, score: Callable) -> list[dict]:
    """A row per variant: its name, what it chose, time_interleaved's figures, samples/s and score(predict)."""
    rows = []
    for i, v in enumerate(variants):
        row = {"name": v["name"], "chose": v.get("chose"), **timed[i]}
        if "p50_ms" in row:
            row.update(throughput=batch / (row["p50_ms"] / 1e3), accuracy=score(v["predict"]))
        rows.append(row)
    return rows


def print_rows(rows: list[dict], columns: dict[str, Callable[[dict], str]], width: int = 40) -> None:
    """A variant a line: its name, then `columns` (title -> the row's cell); what it chose below it; a failed one's error."""
    sizes = [max(8, len(title)) for title in columns]
    head = f"{'runtime':<{width}} " + " ".join(f"{title:>{size}}" for title, size in zip(columns, sizes))
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if "throughput" not in r:
            print(f"{r['name']:<{width}} failed: {r['error']}")
            continue
        print(f"{r['name']:<{width}} " + " ".join(f"{cell(r):>{size}}" for cell, size in zip(columns.values(), sizes)))
        if r.get("chose"):
            print(f"    ({', '.join(f'{k}={v}' for k, v in r['chose'].items())})")


def report(name: str, results: list[dict], print_table: Callable[[dict], None], **extra) -> None:
    """Print the CPU and a table per result; write them, the machine and `extra` to results/<name>.json."""
    print(f"\nCPU: {cpu_description()}")
    for result in results:
        print_table(result)
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": cpu_info(), **extra, "pipelines": results}, indent=2, default=str))
    print(f"\nwrote {out}")
