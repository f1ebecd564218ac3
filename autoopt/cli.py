"""The command line: parse, call the API, print. No logic lives here."""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from .errors import AutoOptError
from .progress import Progress
from .results import TrialState

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the fastest deployable version of a PyTorch model that meets your targets.")
# Piped output (CI logs, files) gets room for the summary table instead of the 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(exc: AutoOptError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.for_cli())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _describe(config: dict) -> str:
    from .knobs import describe  # imports torch: only once a search runs

    return describe(config)


def _summary(result) -> Table:
    train = result.task == "train"
    rows = ([result.reference] if result.reference else []) + [t for t in result.top(5) if t is not result.reference]
    ref_name = "fp32 eager, no checkpointing, largest batch that fits" if train else "every knob at its baseline"
    table = Table(title=f"Study {result.study_name}: the reference ({ref_name}) and the top feasible trials")
    columns = (("trial", "configuration (baseline knobs omitted)", "batch", "step p50 ms", "step p95 ms", "samples/s",
                "speedup", "peak MB", "loss dev", "grad cos") if train else
               ("trial", "configuration (baseline knobs omitted)", "p50 ms", "p95 ms", "samples/s", "speedup",
                "peak MB", "size MB", "accuracy", "drop"))
    for col in columns:
        table.add_column(col, justify="left" if col.startswith("configuration") else "right")
    for t in rows:
        m = t.figures
        speedup = result.speedup(t)
        mark = "*" if t.remeasured else ""
        head = [f"{t.number}{mark} (ref)" if t is result.reference else f"{t.number}{mark}", escape(_describe(t.config))]
        if train:
            table.add_row(*head, str(t.config["batch_size"]), f"{m['latency_ms_p50']:.1f}", f"{m['latency_ms_p95']:.1f}",
                          f"{m['throughput']:,.0f}", f"{speedup:.2f}x" if speedup else "-", f"{m['peak_memory_mb']:.1f}",
                          f"{m['accuracy_drop']:.4f}", f"{m['grad_cosine']:.4f}")
        else:
            table.add_row(*head, f"{m['latency_ms_p50']:.2f}", f"{m['latency_ms_p95']:.2f}", f"{m['throughput']:,.0f}",
                          f"{speedup:.2f}x" if speedup else "-", f"{m['peak_memory_mb']:.1f}",
                          f"{m['model_size_mb']:.2f}" if "model_size_mb" in m else "-",
                          f"{m['accuracy']:.4f}", f"{m['accuracy_drop']:+.4f}")
    return table


@app.command()
def search(
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline file or bundled name (default: digits_cnn)."),
    target_latency: Optional[str] = typer.Option(None, help="p95 latency bound of one batch call: 100ms, 0.1s, 250us."),
    target_memory: Optional[str] = typer.Option(None, help="Peak memory bound: 512MB, 2GiB."),
    max_accuracy_drop: str = typer.Option("1%", help="Allowed metric drop vs the reference: 1% or 0.01."),
    space: Optional[str] = typer.Option(None, help="Search space YAML file (default: search_spaces/default.yaml)."),
    trials: int = typer.Option(20, min=1, help="Trials the study should hold, the reference included."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long: 30m, 2h."),
    seed: Optional[int] = typer.Option(None, help="Sampler seed."),
    study: Optional[str] = typer.Option(None, help="Study name; the same name resumes a study."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI or store directory (default: ./mlruns)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    trial_timeout: str = typer.Option("10m", help="Time limit of one trial: 10m, 600s."),
    min_time: str = typer.Option("1s", help="Timed calls of one trial last at least this long (more = steadier)."),
    export: Optional[str] = typer.Option(None, help="After the search, export the best trial: onnx or torchscript "
                                                    "(the search then only samples the runtime it ships)."),
    out: Optional[str] = typer.Option(None, help="Bundle directory of --export (default: exports/<study>)."),
    register: Optional[str] = typer.Option(None, help="Register the exported model in MLflow under this name."),
    remeasure_top: int = typer.Option(3, min=0, help="Re-time the reference and this many best trials interleaved "
                                                     "at the end; the winner is chosen on those figures (0: off)."),
    sampler: str = typer.Option("tpe", help="tpe, gp (Gaussian process: slower sampling, for few slow trials), random "
                                            "or grid (every combination once)."),
    warm_start: bool = typer.Option(True, help="Try the known-good combinations for the device right after the reference."),
    task: str = typer.Option("infer", help="infer (serving: latency, throughput) or train (the training step: "
                                            "batch, precision, checkpointing under --target-memory)."),
    jobs: int = typer.Option(1, min=1, help="Trials at once on this machine (builds overlap; timing takes the "
                                             "device alone)."),
    fresh_workers: bool = typer.Option(False, help="A new worker process per trial instead of a warm one (~3 s "
                                                    "more per trial)."),
    early_stop: bool = typer.Option(True, help="Stop a trial already past --target-latency (accuracy not checked); "
                                               "--no-early-stop measures every trial fully."),
) -> None:
    """Search for the fastest configuration that meets the targets; log every trial to MLflow."""
    from . import api

    try:
        result = api.search(
            pipeline, target_latency=target_latency, target_memory=target_memory, max_accuracy_drop=max_accuracy_drop,
            space=space, trials=trials, timeout=timeout, seed=seed, study=study, tracking_uri=tracking_uri,
            storage=storage, device=device, trial_timeout=trial_timeout, min_time=min_time, export=export, out=out,
            register=register, task=task, remeasure_top=remeasure_top, sampler=sampler, warm_start=warm_start,
            jobs=jobs, fresh_workers=fresh_workers, early_stop=early_stop, listeners=[Progress(console, trials)],
        )
    except AutoOptError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # before the study started: nothing to report
        err.print("interrupted")
        raise typer.Exit(130) from None
    _report_search(result, export, {"tracking-uri": tracking_uri, "storage": storage, "out": out})


def _report_search(result, export: str | None, flags: dict) -> None:
    """The outcome of a search, and its exit code: 130 interrupted, 3 nothing feasible or exportable."""
    console.print(_summary(result))
    if any(t.remeasured for t in result.trials):
        console.print("* re-measured at the end, interleaved with the reference (10 rounds): latency and samples/s are "
                      "those figures, the speedup the median of the per-round ratios; the winner is chosen on them.",
                      highlight=False)
    if result.interrupted:
        err.print(f"Interrupted: the study holds {len(result.trials)} trials; "
                  f"run again with --study {result.study_name} to continue.", highlight=False)
        raise typer.Exit(130)
    console.print(f"MLflow: {result.tracking_uri}  (browse with `autoopt ui`)", highlight=False)
    if result.export_interrupted:
        where = "".join(f" --{flag} {value}" for flag, value in flags.items() if value)
        err.print(f"Interrupted during the export: study {result.study_name} is complete and nothing was written; "
                  f"export its winner with `autoopt export --study {result.study_name} --format {export}{where}`.",
                  highlight=False)
        raise typer.Exit(130)
    best = result.best
    if best is None:
        closest = result.closest
        err.print("[bold red]No trial met all constraints.[/]")
        if closest is not None:
            err.print(escape(f"Closest: trial {closest.number} ({_describe(closest.config)}): "
                             + "; ".join(result.violations(closest)) + "."), highlight=False)
        raise typer.Exit(3)
    speedup = result.speedup(best)
    console.print(f"[bold green]Best:[/] trial {best.number} ({escape(_describe(best.config))}): "
                  f"{best.figures['throughput']:,.0f} samples/s"
                  + (f", {speedup:.2f}x the reference" if speedup else ""), highlight=False)
    if export:
        if result.exported is None:
            err.print(f"[bold red]Nothing exported:[/] no feasible trial ran on the runtime --export {export} ships.")
            raise typer.Exit(3)
        _print_export(result.exported)


def _print_export(exported) -> None:
    v, m = exported.manifest["verification"], exported.manifest
    console.print(f"[bold green]Exported[/] trial {m['source']['trial']} to {exported.path} ({m['format']}, "
                  f"{m['metrics']['model_size_mb']:.2f} MB): verified in a fresh process without autoopt, max abs "
                  f"error {v['max_abs_error']:.2g}, cosine {v['min_cosine']:.6f}, accuracy {v['accuracy']:.4f}; "
                  f"latency p50 {v['fresh_process_latency_ms_p50']:.2f} ms there vs "
                  + (f"{m['remeasured']['latency_ms_p50']:.2f} ms in the search's re-measurement"
                     if m.get("remeasured") else f"{m['metrics']['latency_ms_p50']:.2f} ms in the search"),
                  highlight=False)
    environment = m["runtime"].get("environment")
    if environment:
        console.print(f"Run it with {' '.join(f'{k}={v}' for k, v in environment.items())} in the environment: the "
                      f"malloc thresholds it was measured with (autoopt.load applies them); without them "
                      f"p50 was {v['fresh_process_latency_ms_p50_without_environment']:.2f} ms.", highlight=False)
    if m.get("mlflow_model_uri"):
        console.print(f"MLflow model: {m['mlflow_model_uri']}", highlight=False)


@app.command("export")
def export_command(
    study: str = typer.Option(..., help="The study to export from."),
    trial: Optional[int] = typer.Option(None, help="Trial number (default: the best feasible trial for the format)."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Optional[str] = typer.Option(None, help="Bundle directory (default: exports/<study>)."),
    register: Optional[str] = typer.Option(None, help="Register the exported model in MLflow under this name."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI or store directory (default: ./mlruns)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
) -> None:
    """Export a finished trial as a verified ONNX or TorchScript bundle (model file + autoopt.json)."""
    from . import api

    try:
        exported = api.export(study, trial=trial, format=format, out=out, tracking_uri=tracking_uri,
                              storage=storage, register=register)
    except AutoOptError as exc:
        _fail(exc)
    _print_export(exported)


@app.command()
def trials(
    study: str = typer.Option(..., help="The study to list."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI or store directory (default: ./mlruns)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
) -> None:
    """A table of a study's trials: state, configuration, metrics, feasibility."""
    from . import api

    try:
        records = api.trials(study, tracking_uri=tracking_uri, storage=storage)
    except AutoOptError as exc:
        _fail(exc)
    table = Table(title=f"Study {study}")
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
        table.add_row(str(t.number), t.state, escape(_describe(t.config)), *cells, escape(note))
    console.print(table)


@app.command()
def ui(
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI or store directory (default: ./mlruns)."),
    port: int = typer.Option(5000, min=1, max=65535, help="Port on 127.0.0.1."),
    study: Optional[str] = typer.Option(None, help="Open this study's trials (default: the latest study)."),
) -> None:
    """Start the MLflow UI on the store, bound to 127.0.0.1, and print the URL of the study's trials."""
    from . import tracking

    import signal

    uri, _ = tracking.resolve_store(tracking_uri)
    base = f"http://127.0.0.1:{port}"
    def interrupt(*_):
        raise KeyboardInterrupt

    # A SIGTERM (a service manager, `kill`) stops the UI like Ctrl-C does: the server goes too.
    signal.signal(signal.SIGTERM, interrupt)
    proc = tracking.start_ui(uri, port=port)
    console.print(f"Starting the MLflow UI on {base} (store {uri}) …", highlight=False)
    try:
        tracking.wait_ui(proc, base)
        urls = tracking.study_urls(uri, base, study)
        if urls is None:
            note = f"no study named {study!r}" if study else "no study yet"
            console.print(f"MLflow UI: {base}  ({note} in this store)", highlight=False)
        else:
            console.print(f"Trials of study {urls['study']} (every knob and metric): {urls['compare']}",
                          highlight=False, soft_wrap=True)
            console.print(f"MLflow UI: {urls['runs']}  (the runs table: expand the study's row to see its trials)",
                          highlight=False, soft_wrap=True)
        console.print("Press Ctrl-C to stop.")
        proc.wait()
    except AutoOptError as exc:
        tracking.stop_ui(proc)
        _fail(exc)
    except KeyboardInterrupt:
        tracking.stop_ui(proc)
        raise typer.Exit(130) from None


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug output.")) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)])
    logging.getLogger("autoopt").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for noisy in ("alembic", "mlflow", "optuna"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """The `autoopt` command. A usage error (unknown flag, a value of the wrong type) is one line and exit 2."""
    from typer.exceptions import TyperException

    try:
        code = app(args=argv, prog_name="autoopt", standalone_mode=False)
    except TyperException as exc:
        if not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx is not None else " See 'autoopt --help'."
        err.print(f"[bold red]error:[/] {escape(exc.format_message().rstrip('.'))}.{hint}", highlight=False, soft_wrap=True)
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
