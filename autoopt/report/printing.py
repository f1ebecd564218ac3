"""What the CLI prints: tables and lines for a search, a plan, an export, a re-timing, a study's trials.
Plain functions of the API's results; the console and the error console live here."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .results import TrialState

# Piped output (CI logs, files) gets room for the summary table instead of the 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def describe(config: dict) -> str:
    from ..knobs import describe  # imports torch: only once a search runs

    return describe(config)


def summary_table(result) -> Table:
    """The reference and the top feasible trials, one basis per section: the trials re-measured interleaved at
    the end of the search (with the reference's re-measured figures and the spread of the per-round speedups),
    then those measured only by their own trial (with the reference's trial figures); a speedup compares figures
    of one section only."""
    train = result.task == "train"
    top = [t for t in result.top(5) if t is not result.reference]
    ref_name = "fp32 eager, no checkpointing, largest batch that fits" if train else "every knob at its baseline"
    table = Table(title=f"Study {result.study_name}: the reference ({ref_name}) and the top feasible trials")
    columns = (("trial", "configuration (baseline knobs omitted)", "batch", "step p50 ms", "step p95 ms", "samples/s",
                "speedup", "peak MB", "loss dev", "grad cos") if train else
               ("trial", "configuration (baseline knobs omitted)", "p50 ms", "p95 ms", "samples/s", "speedup",
                "serving MB", "growth MB", "size MB", "accuracy", "drop"))
    for col in columns:
        table.add_column(col, justify="left" if col.startswith("configuration") else "right")
    reference = result.reference
    again = [t for t in top if t.remeasured]
    alone = [t for t in top if not t.remeasured]
    sections = [(again, True), (alone, False)] if reference is not None and reference.remeasured else [(top, False)]
    for rows, remeasured in sections:
        if not rows and not remeasured:
            continue
        if remeasured or len(sections) > 1:
            if table.row_count:
                table.add_section()
            label = "re-measured interleaved at the end" if remeasured else "each trial's own timing (another basis)"
            table.add_row("", f"[dim]{label}[/]", *[""] * (len(columns) - 2))
        for t in ([reference] if reference is not None else []) + rows:
            _summary_row(table, result, t, train, remeasured)
    return table


def _summary_row(table: Table, result, t, train: bool, remeasured: bool) -> None:
    m = t.figures if remeasured else t.metrics
    if remeasured:
        r = t.remeasured
        # the reference is the first candidate of every round: its own ratios are 1
        speedup = f"{r['speedup']:.2f}x ({r['speedup_q25']:.2f}-{r['speedup_q75']:.2f})" if "speedup_q25" in r else \
            f"{r['speedup']:.2f}x"
    else:
        ref = result.reference
        speedup = f"{m['throughput'] / ref.metrics['throughput']:.2f}x" if ref is not None else "-"
    head = [f"{t.number} (ref)" if t is result.reference else str(t.number), escape(describe(t.config))]
    if train:
        table.add_row(*head, str(t.config["batch_size"]), f"{m['latency_ms_p50']:.1f}", f"{m['latency_ms_p95']:.1f}",
                      f"{m['throughput']:,.0f}", speedup, f"{m['peak_memory_mb']:.1f}",
                      f"{m['accuracy_drop']:.4f}", f"{m['grad_cosine']:.4f}")
        return
    cells = [f"{m[key]:{spec}}" if m.get(key) is not None else "-"
             for key, spec in (("serving_rss_mb", ",.0f"), ("peak_memory_mb", ".1f"), ("model_size_mb", ".2f"))]
    table.add_row(*head, f"{m['latency_ms_p50']:.2f}", f"{m['latency_ms_p95']:.2f}", f"{m['throughput']:,.0f}",
                  speedup, *cells, f"{m['accuracy']:.4f}", f"{m['accuracy_drop']:+.4f}")


def print_json(document: dict) -> None:
    import json

    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_plan(plan) -> None:
    table = Table(title=f"Search space of {plan.pipeline} ({plan.task}, {plan.device}) from {plan.space_source}")
    table.add_column("knob")
    table.add_column("values")
    for name, domain in plan.domains.items():
        table.add_row(name, escape(domain))
    console.print(table)
    count = "infinitely many (a continuous domain)" if plan.distinct_configurations == float("inf") else \
        f"{plan.distinct_configurations:,.0f}"
    independent = f" (the values of {', '.join(plan.counted_as_independent)} multiplied in)" \
        if plan.counted_as_independent else ""
    console.print(f"Distinct configurations: {count}{independent}; equivalent ones and combinations that cannot "
                  "work are not counted.", highlight=False)
    if plan.warm_start:
        console.print("Warm start, right after the reference (batch size capped by the reference's latency at run "
                      "time):", highlight=False)
        for config in plan.warm_start:
            console.print(f"  {escape(describe(config))}", highlight=False)
    t = plan.targets
    wanted = ", ".join(f"{label} {value}" for label, value in (
        ("p95 <=", f"{t['latency_ms']:g} ms" if t["latency_ms"] is not None else None),
        (f"{t.get('memory_label', 'memory')} <=", f"{t['memory_mb']:g} MB" if t["memory_mb"] is not None else None),
        ("accuracy drop <=", f"{t['max_accuracy_drop']:g}")) if value is not None)
    limit = f", stopping after {plan.timeout_s:g} s" if plan.timeout_s is not None else ""
    limit += f", or after {plan.patience} trials without a better feasible one" if plan.patience else ""
    console.print(f"Budget: {plan.trials} trials (the reference included), {plan.jobs} at a time{limit}; targets: "
                  f"{wanted}. Dry run: no trial was run.", highlight=False)


def print_export(exported) -> None:
    m = exported.manifest
    v = m.verified
    console.print(f"[bold green]Exported[/] trial {m.source['trial']} to {exported.path} ({m.format}, "
                  f"{m.metrics['model_size_mb']:.2f} MB): verified in a fresh process without autoopt, max abs "
                  f"error {v['max_abs_error']:.2g}, cosine {v['min_cosine']:.6f}, accuracy {v['accuracy']:.4f}; "
                  f"serving_rss_mb {v['serving_rss_mb']:,.0f} (peak resident memory of that process); "
                  f"latency p50 {v['fresh_process_latency_ms_p50']:.2f} ms there vs "
                  + (f"{m.remeasured['latency_ms_p50']:.2f} ms in the search's re-measurement"
                     if m.remeasured else f"{m.metrics['latency_ms_p50']:.2f} ms in the search"),
                  highlight=False)
    environment = m.environment
    if environment:
        console.print(f"Run it with {' '.join(f'{k}={v}' for k, v in environment.items())} in the environment: the "
                      f"malloc thresholds it was measured with (autoopt.load applies them); without them "
                      f"p50 was {v['fresh_process_latency_ms_p50_without_environment']:.2f} ms.", highlight=False)
    if m.measured_as and m.measured_as != m.config["compile_mode"]:
        console.print(f"The trial ran on compile_mode={m.measured_as}; {m.format} ships it built on "
                      f"compile_mode={m.config['compile_mode']}, verified and re-timed above.", highlight=False)
    if m.mlflow_model_uri:
        console.print(f"MLflow model: {m.mlflow_model_uri}", highlight=False)


def print_bench(figures: dict) -> None:
    s = figures["search"]
    console.print(f"{figures['bundle']} ({figures['format']}) at batch {figures['batch']}, median of "
                  f"{figures['processes']} fresh processes: p50 {figures['latency_ms_p50']:.2f} ms, p95 "
                  f"{figures['latency_ms_p95']:.2f} ms, {figures['throughput']:,.0f} samples/s; serving_rss_mb "
                  f"{figures['serving_rss_mb']:,.0f} (peak resident memory of such a process)", highlight=False)
    what = "re-measured interleaved at the end of the search" if s["remeasured"] else "measured by the trial"
    console.print(f"The search recorded p50 {s['latency_ms_p50']:.2f} ms, p95 {s['latency_ms_p95']:.2f} ms, "
                  f"{s['throughput']:,.0f} samples/s at batch {s['batch']} ({what}); the export's fresh process: "
                  f"p50 {figures['export_fresh_process_latency_ms_p50']:.2f} ms"
                  + (f", serving_rss_mb {figures['export_serving_rss_mb']:,.0f}" if figures.get("export_serving_rss_mb")
                     else ""), highlight=False)
    console.print(f"CPU here: {figures['cpu']}", highlight=False)
    if figures["built_on"] and figures["built_on"] != figures["cpu"]:
        console.print(f"[yellow]Built and verified on another CPU:[/] {escape(figures['built_on'])}", highlight=False)


def trials_table(records) -> Table:
    table = Table(title=f"Study {records.study_name}")
    for col in ("trial", "state", "configuration (baseline knobs omitted)", "p95 ms", "samples/s", "peak MB",
                "accuracy", "drop", "feasible / reason"):
        table.add_column(col, justify="left" if col.startswith(("configuration", "state", "feasible")) else "right")
    for t in records:
        m = t.metrics
        # A training trial has no accuracy: its numerics are the loss deviation (the "drop"); a trial
        # stopped past a target has only what was measured until then.
        def cell(key: str, spec: str, m: dict = m) -> str:
            return format(m[key], spec) if key in m else "-"

        accuracy = cell("accuracy", ".4f") if "grad_cosine" not in m else f"cos {m['grad_cosine']:.4f}"
        cells = [cell("latency_ms_p95", ".2f"), cell("throughput", ",.0f"), cell("peak_memory_mb", ".1f"),
                 accuracy, cell("accuracy_drop", "+.4f")]
        note = ("yes" if t.feasible else "no") if t.state == TrialState.COMPLETE else (t.reason or "")
        table.add_row(str(t.number), t.state, escape(describe(t.config)), *cells, escape(note))
    return table
