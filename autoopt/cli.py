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
from .option_table import OPTIONS, TABLE
from .runtimes import FORMATS, packages

TRACKING_HELP = OPTIONS["tracking_uri"].help  # export, trials and ui take --tracking-uri too
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the fastest deployable version of a PyTorch model that meets your targets.")


def _fail(exc: AutoOptError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.for_cli())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def search(
    ctx: typer.Context,
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline file, bundled name, hf:PATH (a Hugging Face model), "
                                                        "FILE.pt2 or FILE.pt (default: the config's, else digits_cnn)."),
    config: Optional[str] = typer.Option(None, help="A YAML file of search options: targets, space, options "
                                                    "(the flags given override it).", rich_help_panel="Search"),
    dry_run: bool = typer.Option(False, help="Print the resolved space, its distinct configurations, the warm start "
                                             "and the budget, and exit without running a trial.", rich_help_panel="Search"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout (progress goes to stderr).",
                                  rich_help_panel="Export and output"),
    **options,
) -> None:
    """Search for the fastest configuration that meets the targets; log every trial to MLflow."""
    from . import api

    # Only the flags given: the others take the config file's values, else the API's defaults. (By the
    # source's name: recent typer carries a click of its own, whose ParameterSource is not click's.)
    given = {name: value for name, value in options.items() if ctx.get_parameter_source(name).name != "DEFAULT"}
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


def _search_flags(command) -> None:
    """The search options' flags, from option_table.TABLE: the command takes them as keywords (--help groups them in
    panels and lists the values of those that take one of a few; the API validates them, with its one-line message)."""
    import inspect

    head = [p for p in inspect.signature(command).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    flags = []
    for o in TABLE:
        flag = typer.Option(o.default, help=o.help, rich_help_panel=o.panel, min=o.minimum if o.cli_range else None,
                            metavar=f"[{'|'.join(o.choices())}]" if o.choices else None)
        annotation = o.kind.cli if o.default is not None else Optional[o.kind.cli]
        flags.append(inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                                       default=flag))
    order = [*head[:3], *flags, *head[3:]]  # pipeline, config, the options, then --dry-run and --json
    command.__signature__ = inspect.Signature(order)
    command.__annotations__ = {p.name: p.annotation for p in order}


_search_flags(search)
app.command()(search)  # after its flags are in its signature


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
    format: Optional[str] = typer.Option(None, "--format", metavar="[" + "|".join(FORMATS) + "]",  # the registry's
                                         help="The bundle's format (default: the study's --export, else the one that "
                                              "ships the winner's runtime)."),
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
