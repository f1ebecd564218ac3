"""The Python API: `search(...)` runs a study and returns a `SearchResult`; `export(...)` ships a trial;
`trials(...)` lists a study's trials. The CLI wraps them."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, option
from .options import SearchOptions
from .pipeline import Pipeline
from .report.results import TrialRecord, closest_infeasible, ranked_feasible, records, reference_of, speedup
from .search_config import FILE_NAME as SEARCH_FILE
from .search_config import merge, to_yaml
from .study.storage import load_study
from .targets import Targets

log = logging.getLogger("autoopt")


@dataclass
class SearchResult:
    study: object  # the optuna.Study
    study_name: str
    pipeline: str
    targets: Targets
    trials: list[TrialRecord]
    reference_accuracy: float | None  # None for the training task
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    interrupted: bool = False  # Ctrl-C stopped the search; `trials` holds what finished
    export_interrupted: bool = False  # Ctrl-C stopped the export of a finished search: nothing was written
    exported: object = None  # the ExportResult when the search was asked to export
    task: str = "infer"
    options: SearchOptions | None = None  # what the search ran with (the config file's and the keywords')

    @property
    def reference(self) -> TrialRecord | None:
        """Inference: trial 0 (every knob at its baseline). Training: the plain way to train within the
        targets: fp32, eager, no checkpointing, at the largest batch size that met them."""
        if self.task == "train":
            plain = [t for t in self.trials if t.feasible and t.reused_from is None and t.config.get("precision") == "fp32"
                     and t.config.get("checkpointing") == "none" and t.config.get("compile_mode") == "eager"]
            return max(plain, key=lambda t: (t.config["batch_size"], t.metrics["throughput"]), default=None)
        return reference_of(self.trials)

    @property
    def best(self) -> TrialRecord | None:
        """The feasible trial with the highest throughput, or None when no trial met every target."""
        ranked = ranked_feasible(self.trials)
        return ranked[0] if ranked else None

    @property
    def tie(self):
        """results.Tie when the best trial won a tie within the noise (else None)."""
        from .report.results import winning_tie

        return winning_tie(self.trials)

    def top(self, k: int = 5) -> list[TrialRecord]:
        return ranked_feasible(self.trials)[:k]

    @property
    def closest(self) -> TrialRecord | None:
        """When nothing is feasible: the trial that misses the targets by the least."""
        return closest_infeasible(self.trials, self.targets)

    def violations(self, trial: TrialRecord) -> list[str]:
        return [self.targets.describe_violation(k, v) for k, v in trial.constraints.items() if v > 0]

    def speedup(self, trial: TrialRecord) -> float | None:
        """Throughput relative to the reference (see results.speedup)."""
        return speedup(trial, self.reference)

    def to_dict(self) -> dict:
        """The result as plain data (`autoopt search --json`): the study, the best, the reference, the
        closest miss when nothing was feasible, the exported bundle, every trial."""
        best, reference, exported = self.best, self.reference, self.exported
        closest = self.closest if best is None else None
        return {"study": self.study_name, "pipeline": self.pipeline, "task": self.task,
                "tracking_uri": self.tracking_uri, "mlflow_parent_run_id": self.parent_run_id,
                "interrupted": self.interrupted or self.export_interrupted,
                "best": best.to_dict() if best else None, "speedup": self.speedup(best) if best else None,
                "tie": self.tie.describe() if best and self.tie else None,
                "reference": reference.to_dict() if reference else None,
                "closest": closest.to_dict() if closest else None,
                "exported": {"path": str(exported.path), "manifest": exported.manifest.as_dict()} if exported else None,
                "trials": [t.to_dict() for t in self.trials]}

    def trials_dataframe(self):
        """One row per trial (a pandas DataFrame indexed by trial number): state, feasibility, every knob,
        every metric, the re-measured figures (results.trials_dataframe)."""
        from .report.results import trials_dataframe

        return trials_dataframe(self.trials)

    def runs_url(self, base: str = "http://127.0.0.1:5000") -> str:
        from .report.tracking import runs_url

        return runs_url(base, self.experiment_id, self.study_name)


def search(pipeline: str | os.PathLike | Pipeline | None = None, *, config: str | os.PathLike | None = None,
           options: SearchOptions | None = None, listeners: list | tuple = (), **keywords) -> SearchResult:
    """Search for the fastest configuration of `pipeline` that meets the targets.

    pipeline: a pipeline file, a bundled pipeline name, or a Pipeline (default: the config file's, else
    the bundled default). keywords: the options (target_latency="100ms", target_memory="1GB",
    max_accuracy_drop="1%", trials=20, export="onnx", ...; every one is described in `SearchOptions`),
    or `options` built by `SearchOptions.parse`. config: a YAML file of options (search_config); the
    keywords override it. listeners: objects with optional search_started(finished records, total, jobs,
    timeout_s) / trial_started(record) / trial_finished(record) / search_finished() methods (the trial
    events come from the job threads).
    """
    from .trial.accuracy import reference_accuracy
    from .pipeline import check_pipeline, load_pipeline
    from .report.artifacts import write_report
    from .study.runner import Runner
    from .study.storage import begin_search, check_resume, storage_backend, search_signature
    from .study.loop import open_study, run
    from .report.tracking import Tracker, check_reachable, resolve_store

    pipeline, opts = _options(pipeline, config, options, keywords)
    pipe = load_pipeline(pipeline)
    name = _study_name(pipe, opts)
    uri, store = resolve_store(opts.tracking_uri)
    check_reachable(uri)
    storage = storage_backend(opts.storage, store)
    log.info("Checking pipeline %s (the first use may train or download its model)…", pipe.name)
    check_pipeline(pipe)
    space = _resolve_space(pipe, opts)
    ref_accuracy = None if opts.task == "train" else reference_accuracy(pipe)  # training: a loss trajectory
    study = open_study(name, storage, opts.seed, space, opts.device, opts.sampler,
                       opts.targets.latency_ms if opts.task == "infer" else None)
    check_resume(study, search_signature(space, opts.targets, opts.task, opts.device), space.source)
    tracker = Tracker(uri, store, pipe.name if opts.task == "infer" else f"{pipe.name}-train")  # metrics differ by task
    tracker.start_study(name, _study_params(pipe, space, opts, ref_accuracy))
    tracker.log_text(to_yaml(pipe.source, opts, name), SEARCH_FILE)  # repeats the search: --config search.yaml
    # What a later `autoopt export` needs to rebuild a trial and log the model beside the study.
    begin_search(study, {"pipeline": pipe.source, "tracking_uri": uri, "parent_run_id": tracker.parent_run_id,
                            "task": opts.task, "export": opts.export})
    with tracker.failing_study(), Runner(pipe, opts, ref_accuracy, study) as runner:
        interrupted = False
        try:
            run(study, space, runner.evaluators(), opts.targets, opts.trials, opts.timeout_s, opts.device,
                [tracker, *listeners], storage, on_interrupt=runner.interrupt, warm_start=opts.warm_start, patience=opts.patience)
            if opts.task == "infer" and opts.remeasure_top:
                runner.remeasure(records(study))
        except KeyboardInterrupt:
            interrupted = True  # the running trials are already stopped and marked; report what finished
        result = SearchResult(
            study=study, study_name=name, pipeline=pipe.name, targets=opts.targets, trials=records(study),
            reference_accuracy=ref_accuracy, tracking_uri=uri, task=opts.task, experiment_id=tracker.experiment_id,
            parent_run_id=tracker.parent_run_id, interrupted=interrupted, options=opts,
        )
        files = write_report(result.trials, opts.targets, study, result.reference, runner.tmp,
                             f"Study {name} ({pipe.name}, task {opts.task})")
        tracker.finish_study(result.best, files, interrupted, result.trials)
    if opts.export is not None and not interrupted:
        _export_winner(result, opts, pipe)
    return result


def _study_name(pipe: Pipeline, opts: SearchOptions) -> str:
    """The study's name; with --export, its bundle directory is checked writable now, not after the search."""
    name = opts.study or f"{pipe.name}{'-train' if opts.task == 'train' else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    if opts.export is not None:
        from .bundle.export import check_out

        check_out(_bundle_dir(opts, name))
    return name


def _options(pipeline, config, options: SearchOptions | None, keywords: dict):
    """The pipeline and options of a search: `options`, or the config file's overridden by the keywords."""
    if options is not None and (keywords or config is not None):
        given = sorted(keywords) + (["config"] if config is not None else [])
        raise ConfigError(f"search() takes options= or keywords and config=, not both. Got options= and {given}.")
    if options is None:
        pipeline, keywords = merge(config, pipeline, keywords)
        options = SearchOptions.parse(**keywords)
    return _bring(pipeline, options), options


def _bring(pipeline, opts: SearchOptions):
    """A model brought as hf:PATH, FILE.pt2 or FILE.pt, as its pipeline file (sources/); the settings only such a
    model reads, checked."""
    from .sources import CHECKED, check_settings, is_source, pipeline_file

    settings = {name: getattr(opts, name) for name in CHECKED}
    check_settings(pipeline, settings)
    return pipeline_file(pipeline, settings, opts.save_pipeline) if is_source(pipeline) else pipeline


def plan(pipeline: str | os.PathLike | Pipeline | None = None, *, config: str | os.PathLike | None = None,
         **keywords):
    """What `search(pipeline, config=config, **keywords)` would do, without running a trial or touching a
    store (`autoopt search --dry-run`): a planning.SearchPlan."""
    from .machine import search_features
    from .pipeline import load_pipeline
    from .study.planning import SearchPlan, count_distinct

    pipeline, opts = _options(pipeline, config, None, keywords)
    pipe = load_pipeline(pipeline)
    space = _resolve_space(pipe, opts)
    distinct, independent = count_distinct(space, opts.device)
    warm = space.warm_start(opts.device, None, search_features(opts.device)) if opts.warm_start else []
    t = opts.targets
    return SearchPlan(
        pipeline=pipe.name, task=opts.task, device=opts.device, space_source=space.source,
        domains={name: domain.describe() for name, domain in space.domains.items()}, notes=list(space.notes),
        distinct_configurations=distinct, counted_as_independent=independent, warm_start=warm, trials=opts.trials,
        timeout_s=opts.timeout_s, jobs=opts.jobs, patience=opts.patience,
        targets={"latency_ms": t.latency_ms, "memory_mb": t.memory_mb, "memory_basis": t.memory_basis,
                 "memory_label": t.memory_label, "max_accuracy_drop": t.max_accuracy_drop},
    )


def _resolve_space(pipe, opts: SearchOptions):
    """The search space of the task, its load notes told, restricted to what `--export` ships and, for
    training, fitted to the model's repeated blocks."""
    from .pipeline import check_training
    from .runtimes import FORMATS
    from .padding import find
    from .study.programs import fit_space as fit_program
    from .study.space import SPACES_DIR, fit_checkpointing, fit_pipeline, load_space

    space = load_space(opts.space, opts.device, opts.task)
    for note in space.notes:
        log.warning(note)
    fit_pipeline(space, pipe, explicit=Path(space.source).parent != SPACES_DIR)
    fit_program(space, pipe, opts.device, opts.task)
    if opts.task == "infer" and (found := find(pipe)) is not None:
        log.info("Inputs: %s.", found.describe())
    if opts.export is not None:  # the reference stays eager; every sampled trial runs what the format ships
        space.restrict("compile_mode", FORMATS[opts.export])
    if opts.task == "train":
        fit_checkpointing(space, *check_training(pipe), explicit=opts.space is not None)
    return space


def _study_params(pipe, space, opts: SearchOptions, ref_accuracy: float | None) -> dict:
    """The MLflow params of the study's parent run."""
    from .bundle.export import package_versions
    from .machine import bf16_matmul_speedup, cpu_info, gpu_info
    from .runtimes import packages

    cpu, gpu = cpu_info(), (gpu_info() if opts.device == "cuda" else None) or {}
    return {
        "pipeline": pipe.name, "pipeline_source": pipe.source or "in-memory", "task": opts.task,
        "space": space.source, "device": opts.device, "seed": opts.seed, "sampler": opts.sampler,
        "warm_start": opts.warm_start, "early_stop": opts.early_stop, "patience": opts.patience,
        "target_latency_ms": opts.targets.latency_ms, "target_memory_mb": opts.targets.memory_mb,
        "memory_basis": opts.targets.memory_basis,
        "max_accuracy_drop": opts.targets.max_accuracy_drop, "reference_accuracy": ref_accuracy,
        "cpu_model": cpu["model"], "cpu_cores": cpu["cores"], "cpu_features": " ".join(cpu["features"]) or "none",
        "cpu_bf16_matmul_speedup": round(bf16_matmul_speedup(), 2) if opts.device == "cpu" else None,
        "gpu_name": gpu.get("name"), "gpu_compute_capability": gpu.get("compute_capability"),
        **{f"{name}_version": v or "not installed"
           for name, v in package_versions("autoopt", "torch", "optuna", "mlflow", *packages()).items()},
    }


def _bundle_dir(opts: SearchOptions, study_name: str) -> Path:
    """Where `--export` writes the winner's bundle: --out, else exports/<study>."""
    return Path(opts.out) if opts.out else Path("exports") / study_name


def _export_winner(result: SearchResult, opts: SearchOptions, pipe) -> None:
    """Export the best exportable trial of a finished search into `result.exported`; None (with a
    warning) when none met the targets."""
    from .bundle.export import select_trial

    try:
        chosen = select_trial(result.study, None, opts.export)
    except ConfigError as exc:  # nothing exportable met the targets: reported like no feasible trial
        log.warning("Nothing exported: %s", exc)
        return
    out = _bundle_dir(opts, result.study_name)
    try:
        result.exported = _export_and_log(result.study, chosen, opts.export, out, opts.register, pipe)
    except KeyboardInterrupt:  # the search is complete and stored; only the bundle is missing
        result.export_interrupted = True


def export(study: str | None = None, *, trial: int | None = None, format: str | None = None, out: str | os.PathLike | None = None,
           tracking_uri: str | os.PathLike | None = None, storage: str | None = None, register: str | None = None,
           pipeline: Pipeline | None = None):
    """Export a finished trial of `study` (default: the latest study; its best feasible trial) as a verified bundle.

    format: an export format ("aoti", "onnx", "openvino", "torchscript"); the trial must have run on the runtime
    that writes it. None: the study's --export, else the format that ships the trial (bundle.default_format).
    out: the bundle directory (default exports/<study>). register: an MLflow registered-model name.
    pipeline: needed only when the study searched an in-memory Pipeline (no file to reload).
    """
    from .bundle.export import check_format, default_format, select_trial
    from .study.storage import search_meta

    if format is not None:
        check_format(format)
    optuna_study = load_study(study, tracking_uri, storage)
    study = optuna_study.study_name
    if search_meta(optuna_study).get("task") == "train":
        raise ConfigError(f"Study {study} searched the training step ({option('task', 'train')}): there is no "
                          f"inference model to export. Export a study of {option('task', 'infer')}.")
    carry = format is None  # the winner ships, whatever its runtime
    format = format or default_format(optuna_study, trial)
    chosen = select_trial(optuna_study, trial, format, carry=carry)
    if pipeline is None and not search_meta(optuna_study).get("pipeline"):
        raise ConfigError(f"Study {study} searched an in-memory pipeline: pass pipeline= to export it.")
    return _export_and_log(optuna_study, chosen, format, out or Path("exports") / study, register, pipeline)


def trials(study: str | None = None, *, tracking_uri: str | os.PathLike | None = None,
           storage: str | None = None) -> list[TrialRecord]:
    """The trials of a study (default: the latest one): state, config, metrics, feasibility, for `autoopt trials`;
    the list's `study_name` says which study it was."""
    optuna_study = load_study(study, tracking_uri, storage)
    return Trials(records(optuna_study), study_name=optuna_study.study_name)


class Trials(list):
    """A study's trial records, and the study's name."""

    def __init__(self, items, study_name: str):
        super().__init__(items)
        self.study_name = study_name


def _export_and_log(optuna_study, chosen: TrialRecord, fmt: str, out, register: str | None, pipeline):
    from .bundle.export import export_trial
    from .study.storage import trial_meta
    from .bundle.logged_model import log_exported_model

    result = export_trial(optuna_study, chosen, fmt, out, pipeline)
    meta = trial_meta(optuna_study, chosen)  # the MLflow store of the machine that ran the trial
    local = meta.get("tracking_uri", "").startswith("sqlite:///")
    if local and not Path(meta["tracking_uri"][len("sqlite:///"):]).parent.exists():
        log.warning("The bundle is written; its MLflow model is not logged: trial %d ran on host %s, whose MLflow store "
                    "(%s) is not on this machine.", chosen.number, meta["host"], meta["tracking_uri"])
    elif meta.get("parent_run_id"):
        result.manifest.mlflow_model_uri = log_exported_model(
            meta["tracking_uri"], meta["parent_run_id"], result.path, result.manifest, register)
    return result
