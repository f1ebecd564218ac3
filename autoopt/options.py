"""The options of a search, validated once: the CLI and the Python API build the same `SearchOptions`.

`SearchOptions.parse(**raw)` takes what a user wrote (strings with units such as "100ms", or plain
numbers from Python) and returns normalized values, or raises a ConfigError that names the option as
its reader knows it (`target_latency` in Python, `--target-latency` on the command line).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from .errors import ConfigError, option
from .knobs import TASKS
from .targets import Targets
from .units import parse_duration_s, parse_fraction, parse_latency_ms, parse_memory_mb

SAMPLERS = ("tpe", "gp", "random", "grid")
MEMORY_BASES = ("serving", "growth")

# What a user may pass, with the defaults a search uses when it is not given.
DEFAULTS = {
    "target_latency": None, "target_memory": None, "memory_basis": None, "max_accuracy_drop": "1%", "space": None, "trials": 20,
    "timeout": None, "seed": None, "study": None, "tracking_uri": None, "storage": None, "device": "auto",
    "trial_timeout": "10m", "min_time": "1s", "export": None, "out": None, "register": None, "task": "infer",
    "remeasure_top": 3, "sampler": "tpe", "warm_start": True, "jobs": 1, "fresh_workers": False,
    "early_stop": True, "patience": None, "screen": True, "texts": None, "seq_len": None, "labels": None,
    "input_shape": None, "input_dtype": None, "save_pipeline": None,
}


@dataclass(frozen=True)
class SearchOptions:
    """A search's options, normalized; built by `parse`, whose DEFAULTS are the one place defaults live.

    targets: latency (p95 of one batch call, "100ms"; a bare number is ms), memory ("512MB", "2GiB"; a
        bare number is MB) and the allowed accuracy drop ("1%" or 0.01, points of the pipeline metric).
    memory_basis: what the memory target bounds: "serving" (default for inference on the CPU: the peak resident
        memory of a fresh process serving the candidate, serving_rss_mb) or "growth" (the memory a warm worker
        gains loading and calling it, peak_memory_mb: the only basis of the training step and of CUDA).
    space: a search-space YAML file or a bundled space name (default: search_spaces/default.yaml), or
        the space itself as a mapping {knob: domain}.
    trials: finished trials the study should hold (a resumed study counts its earlier trials).
    timeout_s: stop starting trials after this long ("30m"; a bare number is seconds).
    study / storage: the Optuna study name and storage (default: a journal file in the MLflow store).
    tracking_uri: MLflow tracking URI, or a directory for a local store (default: ./mlruns).
    device: "cpu" or "cuda" ("auto" resolves to cuda where one is visible).
    trial_timeout_s, min_time_s: the time limit of one trial; timed calls last at least min_time_s.
    export / out / register: after the search, export the best feasible trial in this format to `out`
        (and register it in MLflow under `register`); the search then only samples the runtime that
        format ships, so the measured model and the shipped model are the same thing.
    task: "infer" (serving: latency, throughput) or "train" (the training step: throughput of full
        steps under the memory target and a numerics tolerance; default space search_spaces/train.yaml).
    remeasure_top: at the end, re-time the reference and this many best feasible trials interleaved
        (A B A B ...) in one process and pick the winner from those figures (0: off; inference only).
    sampler: "tpe" (default), "gp" (Gaussian process: ~1.5 s per trial of sampling on 2 cores), "random"
        or "grid" (every combination of a space of lists once; no warm start).
    warm_start: try the known-good combinations for the device right after the reference (a new study).
    jobs: trials run at once on this machine, each in its own worker process; builds and accuracy
        checks overlap, latency measurement takes the device alone (a machine-wide lock).
    fresh_workers: a new worker process per trial (about 3 s more per trial) instead of a warm one
        reused until it crashes, times out or has run 25 trials.
    early_stop: a trial already past the latency target stops there (PRUNED, accuracy not checked).
    patience: end the search after this many finished trials without a better feasible one (None: off).
    screen: time a trial briefly first and stop one far below the best feasible trial so far (runner.SCREEN_SHARE).
    texts / seq_len / labels: a model brought as "hf:PATH" (sources/): its texts (a file, one a line; default:
        built-in sentences), the padded length in tokens (default: the longest text's) and, for a classifier, a
        file of true labels (default metric: agreement with the original model).
    input_shape / input_dtype: a model brought as "FILE.pt2" or "FILE.pt" (sources/): one sample's shape without
        the batch axis ("3x224x224"; several inputs: "3x224x224,16") and dtypes (default: a .pt2's example inputs).
    save_pipeline: write the pipeline file built for a brought model there (running it repeats the search).
    """

    targets: Targets
    space: str | os.PathLike | None
    trials: int
    timeout_s: float | None
    seed: int | None
    study: str | None
    tracking_uri: str | os.PathLike | None
    storage: str | None
    device: str
    trial_timeout_s: float
    min_time_s: float
    export: str | None
    out: str | os.PathLike | None
    register: str | None
    task: str
    remeasure_top: int
    sampler: str
    warm_start: bool
    jobs: int
    fresh_workers: bool
    early_stop: bool
    patience: int | None = None
    screen: bool = True
    texts: str | os.PathLike | None = None
    seq_len: int | None = None
    labels: str | os.PathLike | None = None
    input_shape: str | None = None
    input_dtype: str | None = None
    save_pipeline: str | os.PathLike | None = None

    @classmethod
    def parse(cls, **raw) -> "SearchOptions":
        """Validate what the user passed (see DEFAULTS for the names); every problem is a ConfigError."""
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], DEFAULTS, n=1)
            hint = f" Did you mean {option(close[0])}?" if close else ""
            raise ConfigError(f"{option(unknown[0])} is not a search option. Expected one of "
                              f"[{', '.join(DEFAULTS)}].{hint}")
        v = {**DEFAULTS, **raw}
        for name in ("trials", "jobs"):
            _whole(v[name], name, minimum=1)
        _whole(v["remeasure_top"], "remeasure_top", minimum=0)
        for name in ("patience", "seq_len"):
            if v[name] is not None:
                _whole(v[name], name, minimum=1)
        if v["seed"] is not None:
            _whole(v["seed"], "seed", minimum=0, maximum=2**32 - 1)  # what numpy's generators take
        for name in ("out", "register"):
            if v[name] is not None and v["export"] is None:
                from .runtimes import FORMATS

                first = "onnx" if "onnx" in FORMATS else next(iter(FORMATS))  # the one a user would try first
                others = [f for f in FORMATS if f != first]
                raise ConfigError(f"{option(name)} belongs to {option('export')}, which was not given. Add "
                                  f"{option('export', first)} (or {', '.join(others)}), or drop {option(name)}.")
        if v["study"] is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(v["study"])):
            raise ConfigError(f"{option('study')} must be a name of letters, digits, '_', '.' and '-'. "
                              f"Got {v['study']!r}.")
        if v["space"] is not None and not isinstance(v["space"], (str, os.PathLike, dict)):
            raise ConfigError(f"{option('space')} must be a search-space file, a bundled space's name or (in a config "
                              f"file or from Python) the space itself as a mapping. Got {v['space']!r}.")
        _choice(v["sampler"], "sampler", SAMPLERS)
        _choice(v["task"], "task", TASKS)
        if v["export"] is not None:
            from .runtimes import FORMATS

            _choice(v["export"], "export", tuple(FORMATS))
            if v["task"] == "train":
                raise ConfigError(f"{option('export')} ships an inference model; {option('task', 'train')} searches "
                                  f"the training step. Drop {option('export')}, or search with "
                                  f"{option('task', 'infer')}.")
        resolved = resolve_device(v["device"])
        targets = Targets(
            memory_basis=_memory_basis(v["memory_basis"], v["task"], resolved),
            latency_ms=None if v["target_latency"] is None else parse_latency_ms(v["target_latency"], "target_latency"),
            memory_mb=None if v["target_memory"] is None else parse_memory_mb(v["target_memory"], "target_memory"),
            max_accuracy_drop=parse_fraction(v["max_accuracy_drop"], "max_accuracy_drop"),
        )
        return cls(
            targets=targets, space=v["space"], trials=v["trials"],
            timeout_s=None if v["timeout"] is None else _seconds(v["timeout"], "timeout"),
            seed=v["seed"], study=v["study"], tracking_uri=v["tracking_uri"], storage=v["storage"],
            device=resolved, trial_timeout_s=_seconds(v["trial_timeout"], "trial_timeout"),
            min_time_s=_seconds(v["min_time"], "min_time"), export=v["export"], out=v["out"],
            register=v["register"], task=v["task"], remeasure_top=v["remeasure_top"], sampler=v["sampler"],
            warm_start=bool(v["warm_start"]) and v["sampler"] != "grid",  # the grid visits every combination anyway
            jobs=v["jobs"], fresh_workers=bool(v["fresh_workers"]), early_stop=bool(v["early_stop"]),
            patience=v["patience"], screen=bool(v["screen"]), texts=v["texts"], seq_len=v["seq_len"],
            labels=v["labels"], input_shape=v["input_shape"], input_dtype=v["input_dtype"],
            save_pipeline=v["save_pipeline"],
        )

    def as_keywords(self) -> dict:
        """The keywords that `parse` turns into these options (every option: defaults included)."""
        def unit(value, suffix):
            return None if value is None else f"{value:.10g}{suffix}"

        def path(value):
            return None if value is None else os.fspath(value)

        t = self.targets
        return {
            "target_latency": unit(t.latency_ms, "ms"), "target_memory": unit(t.memory_mb, "MB"),
            "memory_basis": t.memory_basis,
            "max_accuracy_drop": unit(t.max_accuracy_drop * 100, "%"),
            "space": os.fspath(self.space) if isinstance(self.space, os.PathLike) else self.space,
            "trials": self.trials, "timeout": unit(self.timeout_s, "s"), "seed": self.seed, "study": self.study,
            "tracking_uri": None if self.tracking_uri is None else os.fspath(self.tracking_uri),
            "storage": self.storage, "device": self.device, "trial_timeout": unit(self.trial_timeout_s, "s"),
            "min_time": unit(self.min_time_s, "s"), "export": self.export,
            "out": None if self.out is None else os.fspath(self.out), "register": self.register, "task": self.task,
            "remeasure_top": self.remeasure_top, "sampler": self.sampler, "warm_start": self.warm_start,
            "jobs": self.jobs, "fresh_workers": self.fresh_workers, "early_stop": self.early_stop,
            "patience": self.patience, "screen": self.screen, "texts": path(self.texts), "seq_len": self.seq_len,
            "labels": path(self.labels), "input_shape": self.input_shape, "input_dtype": self.input_dtype,
            "save_pipeline": path(self.save_pipeline),
        }


def _memory_basis(basis: str | None, task: str, device: str) -> str:
    """"serving" for inference on the CPU unless told otherwise; "growth" where serving means nothing here."""
    if basis is None:
        return "serving" if task == "infer" and device == "cpu" else "growth"
    _choice(basis, "memory_basis", MEMORY_BASES)
    if basis == "serving" and (task != "infer" or device != "cpu"):
        what = f"{option('task', 'train')} measures a training step" if task != "infer" else \
            f"{option('device', device)} measures device memory"
        raise ConfigError(f"{option('memory_basis', 'serving')} is the resident memory of a CPU process serving a "
                          f"bundle; {what}. Use {option('memory_basis', 'growth')}.")
    return basis


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    _choice(device, "device", ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option('device', 'cuda')} was asked for, but no CUDA device is visible. "
                          f"Use {option('device', 'cpu')}.")
    return device


def _choice(value, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{option(name)} must be one of [{', '.join(choices)}]. Got {value!r}.")


def _whole(value, name: str, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        span = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(f"{option(name)} must be a whole number {span}. Got {value!r}.")


def _seconds(value, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0:
            return float(value)
        raise ConfigError(f"{option(name)} must be a positive duration (a number of seconds, or '100ms', '30m'). "
                          f"Got {value!r}.")
    return parse_duration_s(value, name)
