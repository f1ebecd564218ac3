"""Every search option, once. The CLI's `autoopt search` flags (type, default, range, help, --help panel and the
values listed), `SearchOptions` (its fields and docstring), the keys of a `--config` file and `as_keywords` are
generated from TABLE; what one option's value means is checked by its kind, what options mean together by
`SearchOptions.parse`. Adding an option: one entry here, and its test.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, option
from .units import parse_duration_s, parse_fraction, parse_latency_ms, parse_memory_mb

TARGETS, SEARCH, EXECUTION, STORAGE = "Targets", "Search", "Execution", "Storage"
BROUGHT, OUTPUT = "Brought model (hf:PATH, FILE.pt2/.pt)", "Export and output"


@dataclass(frozen=True)
class Kind:
    """How a kind of option is read (parse: what the user wrote -> the field's value, a ConfigError otherwise), written
    back as a keyword `parse` takes (keyword), typed on the command line (cli) and in SearchOptions (python)."""

    parse: Callable[[Any, "Option"], Any]
    keyword: Callable[[Any], Any]
    cli: type
    python: str


@dataclass(frozen=True)
class Option:
    name: str  # the Python keyword and --config key; the flag is --name-with-dashes
    kind: Kind
    default: Any
    help: str  # the flag's --help line
    panel: str  # the --help group
    doc: str = ""  # SearchOptions' docstring says this (default: help)
    field: str = ""  # the SearchOptions field (default: name); "targets.x": attribute x of its Targets
    minimum: int | None = None
    maximum: int | None = None
    cli_range: bool = False  # the command line checks minimum itself (click's usage error, exit 2)
    choices: Callable[[], tuple] | None = None  # the values it takes (listed in --help)

    @property
    def attribute(self) -> str:
        return self.field or self.name


def _optional(parse: Callable) -> Callable:
    return lambda value, opt: None if value is None else parse(value, opt)


def _unit(suffix: str, scale: float = 1.0) -> Callable:
    return lambda value: None if value is None else f"{value * scale:.10g}{suffix}"


def _path(value):
    return None if value is None else os.fspath(value)


def _whole(value, opt: Option) -> int:
    low, high = opt.minimum, opt.maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"of at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{option(opt.name)} must be a whole number {span}. Got {value!r}.")
    return value


def _seconds(value, opt: Option) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0:
            return float(value)
        raise ConfigError(f"{option(opt.name)} must be a positive duration (a number of seconds, or '100ms', '30m'). "
                          f"Got {value!r}.")
    return parse_duration_s(value, opt.name)


def choice(value, name: str, choices: tuple):
    if value not in choices:
        raise ConfigError(f"{option(name)} must be one of [{', '.join(choices)}]. Got {value!r}.")
    return value


def _study(value, opt: Option) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(value)):
        raise ConfigError(f"{option('study')} must be a name of letters, digits, '_', '.' and '-'. Got {value!r}.")
    return value


def _space(value, opt: Option):
    if not isinstance(value, (str, os.PathLike, dict)):
        raise ConfigError(f"{option('space')} must be a search-space file, a bundled space's name or (in a config "
                          f"file or from Python) the space itself as a mapping. Got {value!r}.")
    return value


TEXT = Kind(lambda value, opt: value, lambda value: value, str, "str | None")
PATH = Kind(lambda value, opt: value, _path, str, "str | os.PathLike | None")
FLAG = Kind(lambda value, opt: bool(value), lambda value: value, bool, "bool")
WHOLE = Kind(_whole, lambda value: value, int, "int")
SOME_WHOLE = Kind(_optional(_whole), lambda value: value, int, "int | None")
CHOICE = Kind(lambda value, opt: choice(value, opt.name, opt.choices()), lambda value: value, str, "str")
SOME_CHOICE = Kind(_optional(lambda value, opt: choice(value, opt.name, opt.choices())), lambda value: value, str,
                   "str | None")
DURATION = Kind(_seconds, _unit("s"), str, "float")
SOME_DURATION = Kind(_optional(_seconds), _unit("s"), str, "float | None")
LATENCY = Kind(_optional(lambda value, opt: parse_latency_ms(value, opt.name)), _unit("ms"), str, "float | None")
MEMORY = Kind(_optional(lambda value, opt: parse_memory_mb(value, opt.name)), _unit("MB"), str, "float | None")
FRACTION = Kind(lambda value, opt: parse_fraction(value, opt.name), _unit("%", 100), str, "float")
STUDY = Kind(_optional(_study), lambda value: value, str, "str | None")
SPACE = Kind(_optional(_space), lambda value: os.fspath(value) if isinstance(value, os.PathLike) else value, str,
             "str | os.PathLike | dict | None")


def _formats() -> tuple:
    from .runtimes import FORMATS

    return tuple(FORMATS)


def _tasks() -> tuple:
    from .knobs import TASKS

    return tuple(TASKS)


def resolve_device(device: str, opt: Option | None = None) -> str:
    """"auto": cuda where one is visible, else cpu; "cuda" only where one is."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    choice(device, "device", ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option('device', 'cuda')} was asked for, but no CUDA device is visible. "
                          f"Use {option('device', 'cpu')}.")
    return device


DEVICE = Kind(resolve_device, lambda value: value, str, "str")

TABLE = (
    Option("target_latency", LATENCY, None, "p95 latency bound of one batch call: 100ms, 0.1s, 250us.", TARGETS,
           doc='p95 latency of one batch call ("100ms"; a bare number is ms); training: of one step',
           field="targets.latency_ms"),
    Option("target_memory", MEMORY, None, "Memory bound: 512MB, 2GiB (of --memory-basis).", TARGETS,
           doc='memory ("512MB", "2GiB"; a bare number is MB) of memory_basis', field="targets.memory_mb"),
    Option("memory_basis", SOME_CHOICE, None,
           "What --target-memory bounds: serving (the peak resident memory of a fresh process serving the candidate; "
           "default for inference on the CPU) or growth (what a warm worker gains loading and calling it; training, "
           "CUDA).", TARGETS, field="targets.memory_basis", choices=lambda: ("serving", "growth"),
           doc='what the memory target bounds: "serving" (default for inference on the CPU: the peak resident memory '
               'of a fresh process serving the candidate, serving_rss_mb) or "growth" (the memory a warm worker gains '
               'loading and calling it, peak_memory_mb: the only basis of the training step and of CUDA)'),
    Option("max_accuracy_drop", FRACTION, "1%", "Allowed metric drop vs the reference: 1% or 0.01.", TARGETS,
           doc='the allowed accuracy drop ("1%" or 0.01, points of the pipeline metric)',
           field="targets.max_accuracy_drop"),
    Option("space", SPACE, None, "Search space YAML file (default: search_spaces/default.yaml).", SEARCH,
           doc="a search-space YAML file or a bundled space name (default: search_spaces/default.yaml), or the space "
               "itself as a mapping {knob: domain}"),
    Option("trials", WHOLE, 20, "Trials the study should hold, the reference included.", SEARCH, minimum=1,
           cli_range=True, doc="finished trials the study should hold (a resumed study counts its earlier trials)"),
    Option("timeout", SOME_DURATION, None, "Stop starting trials after this long: 30m, 2h.", SEARCH, field="timeout_s",
           doc='stop starting trials after this long ("30m"; a bare number is seconds)'),
    Option("seed", SOME_WHOLE, None, "Sampler seed.", SEARCH, minimum=0, maximum=2**32 - 1),  # numpy's generators
    Option("study", STUDY, None, "Study name; the same name resumes a study.", SEARCH,
           doc="the Optuna study name (the same name resumes it)"),
    Option("tracking_uri", PATH, None, "MLflow tracking URI or store directory (default: $MLFLOW_TRACKING_URI, else "
           "./mlruns).", STORAGE),
    Option("storage", TEXT, None, "Optuna storage URL or journal file (default: in the MLflow store).", STORAGE),
    Option("device", DEVICE, "auto", "auto, cpu or cuda.", EXECUTION, choices=lambda: ("auto", "cpu", "cuda"),
           doc='"cpu" or "cuda" ("auto" resolves to cuda where one is visible)'),
    Option("trial_timeout", DURATION, "10m", "Time limit of one trial: 10m, 600s.", EXECUTION, field="trial_timeout_s"),
    Option("min_time", DURATION, "1s", "Timed calls of one trial last at least this long (more = steadier).",
           EXECUTION, field="min_time_s"),
    Option("export", SOME_CHOICE, None, "After the search, export the best trial in this format (the search then only "
           "samples the runtime it ships).", OUTPUT, choices=_formats,
           doc="after the search, export the best feasible trial in this format to `out`; the search then only "
               "samples the runtime that format ships, so the measured model and the shipped model are the same"),
    Option("out", PATH, None, "Bundle directory of --export (default: exports/<study>).", OUTPUT),
    Option("register", TEXT, None, "Register the exported model in MLflow under this name.", OUTPUT),
    Option("task", CHOICE, "infer", "infer (serving: latency, throughput) or train (the training step: batch, "
           "precision, checkpointing under --target-memory).", SEARCH, choices=_tasks,
           doc='"infer" (serving: latency, throughput) or "train" (the training step: throughput of full steps under '
               'the memory target and a numerics tolerance; default space search_spaces/train.yaml)'),
    Option("remeasure_top", WHOLE, 3, "Re-time the reference and this many best trials interleaved at the end; the "
           "winner is chosen on those figures (0: off).", SEARCH, minimum=0, cli_range=True),
    Option("sampler", CHOICE, "tpe", "tpe, gp (Gaussian process: slower sampling, for few slow trials), random or grid "
           "(every combination once).", SEARCH, choices=lambda: ("tpe", "gp", "random", "grid"),
           doc='"tpe", "gp" (Gaussian process: ~1.5 s per trial of sampling on 2 cores), "random" or "grid" (every '
               'combination of a space of lists once; no warm start)'),
    Option("warm_start", FLAG, True, "Try the known-good combinations for the device right after the reference.",
           SEARCH),
    Option("jobs", WHOLE, 1, "Trials at once on this machine (builds overlap; timing takes the device alone).",
           EXECUTION, minimum=1, cli_range=True),
    Option("fresh_workers", FLAG, False, "A new worker process per trial instead of a warm one (~3 s more per trial).",
           EXECUTION, doc="a new worker process per trial (about 3 s more per trial) instead of a warm one reused "
                          "until it crashes, times out or has run 25 trials"),
    Option("early_stop", FLAG, True, "Stop a trial already past --target-latency (accuracy not checked); "
           "--no-early-stop measures every trial fully.", SEARCH),
    Option("patience", SOME_WHOLE, None, "End the search after this many finished trials without a better feasible "
           "one.", SEARCH, minimum=1, cli_range=True),
    Option("screen", FLAG, True, "Time each trial briefly first; one far below the best so far stops there "
           "(--no-screen times every trial fully).", SEARCH),
    Option("texts", PATH, None, "hf:PATH: a text file, one input a line (default: built-in sentences).", BROUGHT),
    Option("seq_len", SOME_WHOLE, None, "hf:PATH: tokens a text is padded to (default: the longest text's).", BROUGHT,
           minimum=1),
    Option("labels", PATH, None, "hf:PATH classifier: true labels, one a line for each text.", BROUGHT),
    Option("input_shape", TEXT, None, "FILE.pt2/.pt: one sample's shape, no batch axis: 3x224x224[,16].", BROUGHT),
    Option("input_dtype", TEXT, None, "FILE.pt2/.pt: input dtype(s): float32, int64[,...].", BROUGHT),
    Option("save_pipeline", PATH, None, "Write the pipeline file built for a brought model here.", BROUGHT),
)
OPTIONS = {o.name: o for o in TABLE}
DEFAULTS = {o.name: o.default for o in TABLE}  # what a search uses for an option it is not given
