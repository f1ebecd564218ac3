"""The command line: parse, call the API, print. No logic lives here."""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from rich.logging import RichHandler
from rich.markup import escape

from .errors import AutoOptError
from .report.printing import (console, describe, err, print_bench, print_export, print_json, print_plan, summary_table,
                              trials_table)
from .report.progress import Progress
from .runtimes import FORMATS, packages

TRACKING_HELP = "MLflow tracking URI or store directory (default: $MLFLOW_TRACKING_URI, else ./mlruns)."
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the fastest deployable version of a PyTorch model that meets your targets.")


def _fail(exc: AutoOptError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.for_cli())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def search(
    ctx: typer.Context,
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline file, bundled name, hf:PATH (a Hugging Face model), "
                                                        "FILE.pt2 or FILE.pt (default: the config's, else digits_cnn)."),
    config: Optional[str] = typer.Option(None, help="A YAML file of search options: targets, space, options "
                                                    "(the flags given override it)."),
    target_latency: Optional[str] = typer.Option(None, help="p95 latency bound of one batch call: 100ms, 0.1s, 250us."),
    target_memory: Optional[str] = typer.Option(None, help="Memory bound: 512MB, 2GiB (of --memory-basis)."),
    memory_basis: Optional[str] = typer.Option(None, help="What --target-memory bounds: serving (the peak resident "
                                                          "memory of a fresh process serving the candidate; default "
                                                          "for inference on the CPU) or growth (what a warm worker "
                                                          "gains loading and calling it; training, CUDA)."),
    max_accuracy_drop: str = typer.Option("1%", help="Allowed metric drop vs the reference: 1% or 0.01."),
    space: Optional[str] = typer.Option(None, help="Search space YAML file (default: search_spaces/default.yaml)."),
    trials: int = typer.Option(20, min=1, help="Trials the study should hold, the reference included."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long: 30m, 2h."),
    seed: Optional[int] = typer.Option(None, help="Sampler seed."),
    study: Optional[str] = typer.Option(None, help="Study name; the same name resumes a study."),
    tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    trial_timeout: str = typer.Option("10m", help="Time limit of one trial: 10m, 600s."),
    min_time: str = typer.Option("1s", help="Timed calls of one trial last at least this long (more = steadier)."),
    export: Optional[str] = typer.Option(None, help="After the search, export the best trial in this format "
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
    patience: Optional[int] = typer.Option(None, min=1, help="End the search after this many finished trials without "
                                                             "a better feasible one."),
    screen: bool = typer.Option(True, help="Time each trial briefly first; one far below the best so far stops there "
                                           "(--no-screen times every trial fully)."),
    texts: Optional[str] = typer.Option(None, help="hf:PATH: a text file, one input a line (default: built-in sentences)."),
    seq_len: Optional[int] = typer.Option(None, help="hf:PATH: tokens a text is padded to (default: the longest text's)."),
    labels: Optional[str] = typer.Option(None, help="hf:PATH classifier: true labels, one a line for each text."),
    input_shape: Optional[str] = typer.Option(None, help="FILE.pt2/.pt: one sample's shape, no batch axis: 3x224x224[,16]."),
    input_dtype: Optional[str] = typer.Option(None, help="FILE.pt2/.pt: input dtype(s): float32, int64[,...]."),
    save_pipeline: Optional[str] = typer.Option(None, help="Write the pipeline file built for a brought model here."),
    dry_run: bool = typer.Option(False, help="Print the resolved space, its distinct configurations, the warm start "
                                             "and the budget, and exit without running a trial."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout (progress goes to stderr)."),
) -> None:
    """Search for the fastest configuration that meets the targets; log every trial to MLflow."""
    from . import api

    # Only the flags given: the others take the config file's values, else the API's defaults. (By the
    # source's name: recent typer carries a click of its own, whose ParameterSource is not click's.)
    given = {name: value for name, value in ctx.params.items() if name not in ("pipeline", "config", "dry_run", "json_out")
             and ctx.get_parameter_source(name).name != "DEFAULT"}
    if dry_run:
        try:
            plan = api.plan(pipeline, config=config, **given)
        except AutoOptError as exc:
            _fail(exc)
        print_json(plan.to_dict()) if json_out else print_plan(plan)
        return
    try:
        result = api.search(pipeline, config=config, listeners=[Progress(err if json_out else console)], **given)
    except AutoOptError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # before the study started: nothing to report
        err.print("interrupted")
        raise typer.Exit(130) from None
    if json_out:
        print_json(result.to_dict())
        raise typer.Exit(_search_exit_code(result))
    _report_search(result)


def _search_exit_code(result) -> int:
    if result.interrupted or result.export_interrupted:
        return 130
    return 3 if result.best is None or (result.options.export and result.exported is None) else 0


# --help groups search's options in panels and lists the values of those that take one of a few
# (validated once, by the API, with its one-line message).
SEARCH_PANELS = {
    "Targets": ("target_latency", "target_memory", "memory_basis", "max_accuracy_drop"),
    "Search": ("config", "space", "trials", "timeout", "seed", "study", "sampler", "warm_start", "task", "early_stop",
               "screen", "patience", "remeasure_top", "dry_run"),
    "Execution": ("device", "trial_timeout", "min_time", "jobs", "fresh_workers"),
    "Storage": ("tracking_uri", "storage"),
    "Brought model (hf:PATH, FILE.pt2/.pt)": ("texts", "seq_len", "labels", "input_shape", "input_dtype", "save_pipeline"),
    "Export and output": ("export", "out", "register", "json_out"),
}
FORMAT_CHOICES = "[" + "|".join(FORMATS) + "]"  # the runtime registry's export formats
CHOICES = {"device": "[auto|cpu|cuda]", "memory_basis": "[serving|growth]", "sampler": "[tpe|gp|random|grid]",
           "task": "[infer|train]", "export": FORMAT_CHOICES, "format": FORMAT_CHOICES}


def _describe_options(command, panels: dict | None = None) -> None:
    import inspect

    parameters = inspect.signature(command).parameters
    for panel, names in (panels or {}).items():
        for name in names:
            parameters[name].default.rich_help_panel = panel
    for name, metavar in CHOICES.items():
        if name in parameters:
            parameters[name].default.metavar = metavar


_describe_options(search, SEARCH_PANELS)


def _report_search(result) -> None:
    """The outcome of a search, and its exit code: 130 interrupted, 3 nothing feasible or exportable."""
    from .report.results import NOISE_FLOOR
    from .study.runner import REMEASURE_ROUNDS

    export = result.options.export
    flags = {"tracking-uri": result.options.tracking_uri, "storage": result.options.storage, "out": result.options.out}
    console.print(summary_table(result))
    if any(t.remeasured for t in result.trials):
        console.print(f"Re-measured rows: {REMEASURE_ROUNDS} interleaved rounds; speedup = median (interquartile range) "
                      "of the per-round ratios to the reference. Rows of another basis are set apart with their own "
                      "reference row. The winner is chosen on the re-measured figures; trials within the noise of the "
                      f"fastest (overlapping ranges, or under {NOISE_FLOOR:.0%} apart) are a tie, which goes to the lower "
                      "p95, then the lower serving memory, then the smaller model file.", highlight=False)
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
            err.print(escape(f"Closest: trial {closest.number} ({describe(closest.config)}): "
                             + "; ".join(result.violations(closest)) + "."), highlight=False)
        raise typer.Exit(3)
    speedup = result.speedup(best)
    tie = result.tie
    console.print(f"[bold green]Best:[/] trial {best.number} ({escape(describe(best.config))}): "
                  f"{best.figures['throughput']:,.0f} samples/s"
                  + (f", {speedup:.2f}x the reference" if speedup else "")
                  + (f"; {escape(tie.describe())}" if tie else ""), highlight=False)
    if not export:
        from .runtimes import format_for

        ships = format_for(best.config.get("compile_mode", "eager"))
        console.print(f"Ships as {ships}: autoopt export --study {result.study_name}" if ships else
                      "No export format ships this runtime.", highlight=False)
    if export:
        if result.exported is None:
            err.print(f"[bold red]Nothing exported:[/] no feasible trial ran on the runtime --export {export} ships.")
            raise typer.Exit(3)
        print_export(result.exported)


@app.command("export")
def export_command(
    study: Optional[str] = typer.Option(None, help="The study to export from (default: the latest study)."),
    trial: Optional[int] = typer.Option(None, help="Trial number (default: the best feasible trial for the format)."),
    format: Optional[str] = typer.Option(None, "--format", help="The bundle's format (default: the study's --export, "
                                                                 "else the one that ships the winner's runtime)."),
    out: Optional[str] = typer.Option(None, help="Bundle directory (default: exports/<study>)."),
    register: Optional[str] = typer.Option(None, help="Register the exported model in MLflow under this name."),
    tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
    json_out: bool = typer.Option(False, "--json", help="Print the bundle's path and manifest as one JSON document."),
) -> None:
    """Export a finished trial as a verified bundle (model file + autoopt.json) that needs no autoopt."""
    from . import api

    try:
        exported = api.export(study, trial=trial, format=format, out=out, tracking_uri=tracking_uri,
                              storage=storage, register=register)
    except AutoOptError as exc:
        _fail(exc)
    if json_out:
        print_json({"path": str(exported.path), "manifest": exported.manifest.as_dict()})
        return
    print_export(exported)


_describe_options(export_command)


@app.command()
def bench(
    bundle: str = typer.Argument(..., help="An exported bundle directory."),
    batch: Optional[int] = typer.Option(None, min=1, help="Batch size to time (default: the trial's)."),
    processes: int = typer.Option(3, min=1, help="Fresh processes to time it in (the median is reported)."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON document."),
) -> None:
    """Re-time an exported bundle in fresh processes without autoopt, as its export verified it."""
    from .bundle.retime import retime

    try:
        figures = retime(bundle, batch, processes)
    except AutoOptError as exc:
        _fail(exc)
    if json_out:
        print_json(figures)
        return
    print_bench(figures)


@app.command()
def trials(
    study: Optional[str] = typer.Option(None, help="The study to list (default: the latest study)."),
    tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or journal file (default: in the MLflow store)."),
    json_out: bool = typer.Option(False, "--json", help="Print the trials as one JSON document."),
) -> None:
    """A table of a study's trials: state, configuration, metrics, feasibility."""
    from . import api

    try:
        records = api.trials(study, tracking_uri=tracking_uri, storage=storage)
    except AutoOptError as exc:
        _fail(exc)
    if json_out:
        print_json({"study": records.study_name, "trials": [t.to_dict() for t in records]})
        return
    console.print(trials_table(records))


@app.command()
def ui(
    tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
    port: int = typer.Option(5000, min=1, max=65535, help="Port on 127.0.0.1."),
    study: Optional[str] = typer.Option(None, help="Open this study's trials (default: the latest study)."),
) -> None:
    """Start the MLflow UI on the store, bound to 127.0.0.1, and print the URL of the study's trials."""
    import signal

    from .report import tracking

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


def _print_version(value: bool) -> None:
    if value:
        from .version import __version__

        from .bundle.export import package_versions

        found = package_versions("torch", "optuna", "mlflow", *(p for p in packages() if p != "torch"))
        console.print(f"autoopt {__version__} ({', '.join(f'{name} {v}' for name, v in found.items())})", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug output."),
           version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                        help="Print the versions of autoopt and its runtimes, and exit.")) -> None:
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
