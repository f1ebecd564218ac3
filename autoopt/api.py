"""The Python API: `search(...)` runs a study and returns a `SearchResult`; the CLI wraps it."""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .accuracy import reference_accuracy
from .errors import ConfigError
from .bundle import FORMATS, export_trial, package_versions, select_trial
from .knobs import TASKS
from .pipeline import Pipeline, check_pipeline, check_training, load_pipeline
from .report import write_report
from .space import load_space
from .knobs.threads import available_cores
from .study import (COMPLETE, SAMPLERS, Targets, TrialRecord, closest_infeasible, known_numerics, open_study, ranked_feasible,
                    records, run, speedup)
from .tracking import Tracker, log_exported_model, resolve_store, runs_url
from .units import parse_duration_s, parse_fraction, parse_latency_ms, parse_memory_mb
from .worker import Worker

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
    exported: object = None  # the ExportResult when the search was asked to export
    task: str = "infer"

    @property
    def reference(self) -> TrialRecord | None:
        """Inference: trial 0 (every knob at its baseline). Training: the plain way to train within the
        targets: fp32, eager, no checkpointing, at the largest batch size that met them."""
        if self.task == "train":
            plain = [t for t in self.trials if t.feasible and t.reused_from is None and t.config.get("precision") == "fp32"
                     and t.config.get("checkpointing") == "none" and t.config.get("compile_mode") == "eager"]
            return max(plain, key=lambda t: (t.config["batch_size"], t.metrics["throughput"]), default=None)
        return next((t for t in self.trials if t.reference and t.state == COMPLETE), None)

    @property
    def best(self) -> TrialRecord | None:
        """The feasible trial with the highest throughput, or None when no trial met every target."""
        ranked = ranked_feasible(self.trials)
        return ranked[0] if ranked else None

    def top(self, k: int = 5) -> list[TrialRecord]:
        return ranked_feasible(self.trials)[:k]

    @property
    def closest(self) -> TrialRecord | None:
        """When nothing is feasible: the trial that misses the targets by the least."""
        return closest_infeasible(self.trials, self.targets)

    def violations(self, trial: TrialRecord) -> list[str]:
        return [self.targets.describe_violation(k, v) for k, v in trial.constraints.items() if v > 0]

    def speedup(self, trial: TrialRecord) -> float | None:
        """Throughput relative to the reference (see study.speedup)."""
        return speedup(trial, self.reference)

    def runs_url(self, base: str = "http://127.0.0.1:5000") -> str:
        return runs_url(base, self.experiment_id, self.study_name)


def search(
    pipeline: str | os.PathLike | Pipeline | None = None,
    *,
    target_latency: str | float | None = None,
    target_memory: str | float | None = None,
    max_accuracy_drop: str | float = "1%",
    space: str | os.PathLike | None = None,
    trials: int = 20,
    timeout: str | float | None = None,
    seed: int | None = None,
    study: str | None = None,
    tracking_uri: str | os.PathLike | None = None,
    storage: str | None = None,
    device: str = "auto",
    trial_timeout: str | float = "10m",
    min_time: str | float = "1s",
    export: str | None = None,
    out: str | os.PathLike | None = None,
    register: str | None = None,
    task: str = "infer",
    remeasure_top: int = 3,
    sampler: str = "tpe",
    warm_start: bool = True,
    jobs: int = 1,
    fresh_workers: bool = False,
    early_stop: bool = True,
    listeners: list | tuple = (),
) -> SearchResult:
    """Search for the fastest configuration of `pipeline` that meets the targets.

    pipeline: a pipeline file, a bundled pipeline name, or a Pipeline (default: the bundled default).
    target_latency: p95 bound of one batch call, "100ms" (a bare number is milliseconds).
    target_memory: peak memory bound, "512MB" or "2GiB" (a bare number is MB).
    max_accuracy_drop: "1%" or 0.01, in points of the pipeline metric as a fraction.
    space: a search-space YAML file or a bundled space name (default: search_spaces/default.yaml).
    trials: finished trials the study should hold (a resumed study counts its earlier trials).
    timeout: stop starting trials after this long, "30m" (a bare number is seconds).
    study / storage: the Optuna study name and storage (default: a journal file in the MLflow store).
    tracking_uri: MLflow tracking URI, or a directory for a local store (default: ./mlruns).
    device: "auto", "cpu" or "cuda". Intra-op threads are the `threads` knob of the space.
    export / out / register: after the search, export the best feasible trial as "onnx" or
    "torchscript" to `out` (and register it in MLflow under `register`); the search then only samples
    the runtime that format ships, so the measured model and the shipped model are the same thing.
    remeasure_top: at the end, re-time the reference and this many best feasible trials interleaved
    (A B A B ...) in one process and pick the winner from those figures (0: off; inference only).
    sampler: "tpe" (default), "gp" (Gaussian process: ~1.5 s per trial of sampling on 2 cores), "random"
    or "grid" (every combination of a space of lists once).
    warm_start: try the known-good combinations for the device right after the reference (a new study).
    jobs: trials run at once on this machine, each in its own worker process. Builds, compiles and
    accuracy checks overlap; latency measurement takes the device alone (a machine-wide lock), so the
    figures stay comparable while the wall time shrinks by what the overlap saves.
    fresh_workers: a new worker process per trial (about 3 s more per trial) instead of a warm one
    reused until it crashes, times out or has run 25 trials.
    early_stop: a trial already past the latency target stops there (PRUNED, accuracy not checked);
    False measures every trial fully and checks its accuracy (memory past the target still stops it).
    task: "infer" (the model serving: latency, throughput) or "train" (the training step: throughput of
    full steps under the memory target and a numerics tolerance; the pipeline needs make_batch and
    loss_fn; default space search_spaces/train.yaml).
    listeners: objects with optional trial_started(record) / trial_finished(record) methods (called
    from the job threads).
    """
    targets = Targets(
        latency_ms=None if target_latency is None else parse_latency_ms(target_latency, "target_latency"),
        memory_mb=None if target_memory is None else parse_memory_mb(target_memory, "target_memory"),
        max_accuracy_drop=parse_fraction(max_accuracy_drop, "max_accuracy_drop"),
    )
    timeout_s = None if timeout is None else _seconds(timeout, "timeout")
    trial_timeout_s = _seconds(trial_timeout, "trial_timeout")
    min_time_s = _seconds(min_time, "min_time")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a whole number of at least 1. Got {trials!r}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number of at least 1. Got {jobs!r}.")
    if study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise ConfigError(f"study must be a name of letters, digits, '_', '.' and '-'. Got {study!r}.")
    device = resolve_device(device)
    if export is not None and export not in FORMATS:
        raise ConfigError(f"export must be one of [{', '.join(FORMATS)}]. Got {export!r}.")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of [{', '.join(SAMPLERS)}]. Got {sampler!r}.")
    if sampler == "grid" and warm_start:
        warm_start = False  # the grid visits every combination anyway
    if task not in TASKS:
        raise ConfigError(f"task must be one of [{', '.join(TASKS)}]. Got {task!r}.")
    if task == "train" and export is not None:
        raise ConfigError("--export ships an inference model; --task train searches the training step. "
                          "Drop --export, or search with --task infer.")

    pipe = load_pipeline(pipeline)
    log.info("Checking pipeline %s (the first use may train or download its model)…", pipe.name)
    check_pipeline(pipe)
    search_space = load_space(space, device, task)
    for note in search_space.notes:
        log.warning(note)
    if task == "train":
        _check_checkpointing(search_space, *check_training(pipe), explicit=space is not None)
        ref_accuracy = None  # the training reference is a loss trajectory, computed in the worker's dir
    else:
        ref_accuracy = reference_accuracy(pipe)

    uri, store = resolve_store(tracking_uri)
    study_name = study or f"{pipe.name}{'-train' if task == 'train' else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    required = None
    if export is not None:  # the reference stays eager; every sampled trial runs what the format ships
        required = {"compile_mode": FORMATS[export]}
        domain = search_space.domains["compile_mode"]
        search_space.domains["compile_mode"] = type(domain)("compile_mode", choices=("eager", FORMATS[export]))
    backend = _storage(storage, store)
    optuna_study = open_study(study_name, backend, seed, search_space, device, required, sampler)
    tracker = Tracker(uri, store, pipe.name)
    tracker.start_study(study_name, {
        "pipeline": pipe.name, "pipeline_source": pipe.source or "in-memory", "task": task,
        "space": search_space.source, "device": device, "seed": seed, "sampler": sampler, "warm_start": warm_start,
        "early_stop": early_stop,
        "target_latency_ms": targets.latency_ms, "target_memory_mb": targets.memory_mb,
        "max_accuracy_drop": targets.max_accuracy_drop, "reference_accuracy": ref_accuracy,
        **{f"{name}_version": v or "not installed"
           for name, v in package_versions("autoopt", "torch", "optuna", "onnxruntime", "mlflow").items()},
    })
    # What a later `autoopt export` needs to rebuild a trial and log the model beside the study.
    optuna_study.set_user_attr("remeasured", {})  # figures of an earlier run of this study are stale now
    optuna_study.set_user_attr("autoopt", {
        "pipeline": pipe.source, "tracking_uri": uri, "parent_run_id": tracker.parent_run_id, "task": task,
    })
    with tempfile.TemporaryDirectory(prefix="autoopt-") as tmp:
        request = {"task": task, "pipeline": pipe.source, "pipeline_pickle": _pickle_if_needed(pipe, tmp),
                   "device": device, "threads": available_cores(), "min_time_s": min_time_s, "min_calls": 20,
                   "memory_limit_mb": targets.memory_mb,
                   "latency_limit_ms": targets.latency_ms if task == "infer" and early_stop else None}
        if task == "train":
            from .training import reference_numerics

            request["reference_numerics"] = reference_numerics(pipe, device, tmp)
        workers = [Worker(tmp, reuse=not fresh_workers) for _ in range(jobs)]

        def evaluator(worker: Worker):
            def evaluate(config: dict, number: int) -> dict:
                work = Path(tmp) / f"trial-{number}"
                work.mkdir()
                known = known_numerics(optuna_study, config)
                result = worker.run({**request, "config": config, "known_numerics": known, "trial": number},
                                    str(work), trial_timeout_s)
                if result["status"] == "complete" and task == "infer":
                    result["metrics"]["accuracy_drop"] = ref_accuracy - result["metrics"]["accuracy"]
                result["log_path"] = str(work / "worker.log")
                return result
            return evaluate

        interrupted = False
        try:
            run(optuna_study, search_space, [evaluator(w) for w in workers], targets, trials, timeout_s, device,
                [tracker, *listeners], backend, on_interrupt=lambda: [w.interrupt() for w in workers],
                warm_start=warm_start)
            if task == "infer" and remeasure_top:
                _remeasure(optuna_study, records(optuna_study), request, targets, remeasure_top, tmp, trial_timeout_s)
        except KeyboardInterrupt:
            interrupted = True  # the running trials are already stopped and marked; report what finished
        finally:
            for w in workers:
                w.close()
        result = SearchResult(
            study=optuna_study, study_name=study_name, pipeline=pipe.name, targets=targets,
            trials=records(optuna_study), reference_accuracy=ref_accuracy, tracking_uri=uri, task=task,
            experiment_id=tracker.experiment_id, parent_run_id=tracker.parent_run_id, interrupted=interrupted,
        )
        files = write_report(result.trials, targets, optuna_study, result.reference, Path(tmp),
                             f"Study {study_name} ({pipe.name}, task {task})")
        tracker.finish_study(result.best, files, interrupted)
    if export is not None and not interrupted:
        try:
            chosen = select_trial(optuna_study, None, export)
        except ConfigError as exc:  # nothing exportable met the targets: reported like no feasible trial
            log.warning("Nothing exported: %s", exc)
        else:
            result.exported = _export_and_log(optuna_study, chosen, export, out or Path("exports") / study_name,
                                              register, pipe)
    return result


def export(study: str, *, trial: int | None = None, format: str = "onnx", out: str | os.PathLike | None = None,
           tracking_uri: str | os.PathLike | None = None, storage: str | None = None, register: str | None = None,
           pipeline: Pipeline | None = None):
    """Export a finished trial of `study` (default: the best feasible one) as a verified bundle.

    format: "onnx" or "torchscript"; the trial must have run on that format's runtime.
    out: the bundle directory (default exports/<study>). register: an MLflow registered-model name.
    pipeline: needed only when the study searched an in-memory Pipeline (no file to reload).
    """
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of [{', '.join(FORMATS)}]. Got {format!r}.")
    optuna_study = load_study(study, tracking_uri, storage)
    if optuna_study.user_attrs.get("autoopt", {}).get("task") == "train":
        raise ConfigError(f"Study {study} searched the training step (--task train): there is no inference model "
                          "to export. Export a study of --task infer.")
    chosen = select_trial(optuna_study, trial, format)
    if pipeline is None and not optuna_study.user_attrs.get("autoopt", {}).get("pipeline"):
        raise ConfigError(f"Study {study} searched an in-memory pipeline: pass pipeline= to export it.")
    return _export_and_log(optuna_study, chosen, format, out or Path("exports") / study, register, pipeline)


def trials(study: str, *, tracking_uri: str | os.PathLike | None = None, storage: str | None = None) -> list[TrialRecord]:
    """The trials of a study (state, config, metrics, feasibility), for `autoopt trials`."""
    return records(load_study(study, tracking_uri, storage))


def load_study(name: str, tracking_uri=None, storage: str | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, store = resolve_store(tracking_uri)
    backend = _storage(storage, store)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = optuna.get_all_study_names(backend)
        raise ConfigError(f"No study named {name!r} in this storage. Studies: {known}.") from None


def _export_and_log(optuna_study, chosen: TrialRecord, fmt: str, out, register: str | None, pipeline):
    result = export_trial(optuna_study, chosen, fmt, out, pipeline)
    meta = optuna_study.user_attrs.get("autoopt", {})
    if meta.get("parent_run_id"):
        result.manifest["mlflow_model_uri"] = log_exported_model(
            meta["tracking_uri"], meta["parent_run_id"], result.path, result.manifest, register)
    return result


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of [auto, cpu, cuda]. Got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is visible. Use --device cpu.")
    return device


REMEASURE_ROUNDS = 10


def _remeasure(study, trials: list[TrialRecord], request: dict, targets: Targets, top: int, tmp: str,
               timeout_s: float) -> None:
    """Re-time the reference and the `top` best feasible trials interleaved; store the figures on the
    study (user attr "remeasured"), where the ranking and the export find them."""
    reference = next((t for t in trials if t.reference and t.state == COMPLETE), None)
    candidates = [t for t in ranked_feasible(trials) if t is not reference][:top]
    if reference is None or not candidates:
        return
    chosen = [reference, *candidates]
    log.info("Re-measuring the reference and the top %d trials interleaved (%d rounds)…", len(candidates),
             REMEASURE_ROUNDS)
    work = Path(tmp) / "remeasure"
    work.mkdir()
    # A worker of its own, started from this thread: a worker dies with the thread that started it
    # (PR_SET_PDEATHSIG), and the job threads are gone by now.
    worker = Worker(tmp)
    try:
        result = worker.run({**request, "task": "remeasure", "configs": [t.config for t in chosen],
                             "rounds": REMEASURE_ROUNDS, "round_time_s": max(0.05, request["min_time_s"] / 5)},
                            str(work), timeout_s)
    finally:
        worker.close()
    if result["status"] != "complete":
        log.warning("The interleaved re-measurement failed (%s): the search's own figures stand.", result["reason"])
        return
    figures = {}
    for t, fig in zip(chosen, result["metrics"]["figures"]):
        fig["feasible"] = targets.latency_ms is None or fig["latency_ms_p95"] <= targets.latency_ms
        figures[str(t.number)] = fig
    study.set_user_attr("remeasured", figures)


def _check_checkpointing(space, found: str, n_blocks: int, explicit: bool) -> None:
    """Checkpointing values the model's blocks cannot carry: an error in the user's space file, dropped
    with a warning from the bundled default space."""
    from .knobs.checkpointing import every
    from .space import Domain

    domain = space.domains.get("checkpointing")
    values = [v for v in (domain.choices or ()) if v != "none"] if domain else []
    if not values:
        return
    if not explicit:
        kept = tuple(v for v in domain.choices if v == "none" or every(v) <= n_blocks)
        if kept != domain.choices:
            log.warning("checkpointing=%s dropped from %s: the model has %s repeated blocks%s.",
                        ", ".join(v for v in domain.choices if v not in kept), space.source, n_blocks or "no",
                        " (give the Pipeline blocks= to name them)" if not n_blocks else f" ({found})")
            space.domains["checkpointing"] = Domain("checkpointing", choices=kept)
        values = [v for v in kept if v != "none"]
        if not values:
            return
    if n_blocks == 0:
        raise ConfigError(f"The 'checkpointing' entry of {space.source} asks for {values}, but the model has no "
                          "repeated blocks autoopt can find (a ModuleList or Sequential of same-typed modules). "
                          "Add blocks=lambda model: [...] to the Pipeline.")
    too_coarse = [v for v in values if every(v) > n_blocks]
    if too_coarse:
        raise ConfigError(f"The 'checkpointing' entry of {space.source} must have k <= {n_blocks} (the blocks of "
                          f"{found}). Got {too_coarse[0]!r}.")
    log.info("Checkpointing wraps the blocks of %s", found)


def _seconds(value, option: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return parse_duration_s(value, option)


def _storage(storage: str | None, store: Path | None):
    """An Optuna storage: an RDB URL as given (several machines may share it), else a journal file
    (safe for several processes on one machine)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if storage and "://" in storage:
        if storage.startswith("postgresql") and not _importable("psycopg") and not _importable("psycopg2"):
            raise ConfigError(f"--storage {storage.split('://')[0]}://… needs a PostgreSQL driver, and none is "
                              "installed. Fix: pip install 'psycopg[binary]'.")
        # Machines that start at once on a fresh database race to create Optuna's tables: the loser
        # of that race fails once and finds the tables on its next try.
        for attempt in range(5):
            try:
                return RDBStorage(storage)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors differ by database
                if attempt == 4 or not _creation_race(exc):
                    raise ConfigError(f"--storage {storage}: cannot open it ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0]}).") from exc
                time.sleep(0.5 + random.random())
    path = Path(storage) if storage else (store or Path("mlruns").resolve()) / "optuna.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _creation_race(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("integrityerror", "unique", "duplicate", "already exists"))


def _pickle_if_needed(pipe: Pipeline, tmp: str) -> str | None:
    """A pipeline built in memory (not loaded from a file) travels to the worker by value."""
    if pipe.source:
        return None
    import cloudpickle

    # Functions from a module the worker cannot import by name (a loaded pipeline file, __main__,
    # a notebook) must travel by value, not as a reference to that module.
    for fn in (pipe.build_model, pipe.make_inputs, pipe.evaluate, pipe.calibration_data, pipe.build_reference):
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if module is not None and module.__name__ != "builtins" and not _importable(module.__name__):
            cloudpickle.register_pickle_by_value(module)
    path = os.path.join(tmp, "pipeline.pkl")
    with open(path, "wb") as f:
        cloudpickle.dump(pipe, f)
    return path


def _importable(name: str) -> bool:
    """Whether a fresh process could import this module by name (sys.modules does not count)."""
    import importlib.machinery

    top = name.partition(".")[0]
    if name == "__main__":
        return False
    return top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(top) is not None
