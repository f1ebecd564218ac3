"""Search spaces: a YAML file with one entry per knob -> validated domains -> suggest(trial) -> dict.

    batch_size: [1, 8, 32, 64]           # a list is categorical
    batch_size: {low: 1, high: 256, log: true}   # a mapping is numeric (step | log)

Knobs the file leaves out are fixed at their baseline, so every trial's params name every knob and
the same dict serves as Optuna params, MLflow params and export manifest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import knobs
from ..errors import ConfigError, option

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = "default"

@dataclass(frozen=True)
class Domain:
    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if knobs.REGISTRY[self.name].integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial):
        d = self.distribution()
        if self.choices is not None:
            return trial.suggest_categorical(self.name, d.choices)
        if knobs.REGISTRY[self.name].integer:
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return "[" + ", ".join(str(c) for c in self.choices) + "]"
        extra = ", log" if self.log else (f", step {self.step:g}" if self.step else "")
        return f"{self.low:g}..{self.high:g}{extra}"


@dataclass
class Space:
    domains: dict[str, Domain]
    source: str
    notes: list[str] = field(default_factory=list)  # values dropped or added at load, for the user
    task: str = "infer"
    required: dict = field(default_factory=dict)  # knob values every sampled (not enqueued) trial must have
    model_form: str = "module"  # a saved program's form (autoopt.study.programs.fit_space), for conflict()

    def conflict(self, config: dict, device: str) -> str | None:
        """Why this combination cannot work here (knobs.conflict), or cannot change this space's saved program."""
        from .programs import conflict

        return knobs.conflict(config, device) or conflict(self.model_form, config)

    def distributions(self) -> dict:
        return {name: domain.distribution() for name, domain in self.domains.items()}

    def suggest(self, trial) -> dict:
        return {name: domain.suggest(trial) for name, domain in self.domains.items()}

    def warm_start(self, device: str, max_batch: float | None = None, features=()) -> list[dict]:
        """The known-good configurations the knobs declare (Knob.warm_start) that this space can express,
        each once, at the middle of batch_sizes(), or the largest one up to `max_batch` when that is smaller
        (the smallest if none is), with each knob's warm_value where the space has it. `features`:
        machine.search_features, for the entries that need one."""
        sizes = self.batch_sizes()
        batch = sizes[len(sizes) // 2]
        if max_batch is not None and batch > max_batch:
            batch = max([b for b in sizes if b <= max_batch], default=sizes[0])
        out: list[dict] = []
        for seed in knobs.warm_start_seeds(self.task, device, features):
            config = {**self.reference_config(), "batch_size": batch, **seed}
            for name, knob in knobs.REGISTRY.items():
                if (knob.warm_value is not None and name not in seed and name in self.domains
                        and self.domains[name].contains(knob.warm_value)
                        and not self.conflict({**config, name: knob.warm_value}, device)):
                    config[name] = knob.warm_value
            if (all(name in self.domains and self.domains[name].contains(value) for name, value in seed.items())
                    and not self.conflict(config, device) and config not in out):
                out.append(config)
        return out

    def batch_sizes(self) -> list[int]:
        """The batch sizes of the space in order: a list's values; of a range, its powers of two (and its ends)."""
        domain = self.domains["batch_size"]
        if domain.choices is not None:
            return sorted(domain.choices)
        low, high = int(domain.low), int(domain.high)
        step = int(domain.step or 1)
        powers = [2 ** i for i in range(high.bit_length()) if low <= 2 ** i <= high and (2 ** i - low) % step == 0]
        return sorted({low, *powers, high - (high - low) % step})

    def restrict(self, name: str, value) -> None:
        """Sampled trials take `value` for knob `name`; the reference keeps the knob's baseline (for
        `--export`: every sampled trial runs on the runtime the format ships)."""
        self.domains[name] = Domain(name, choices=(knobs.REGISTRY[name].baseline, value))
        self.required[name] = value

    def reference_config(self) -> dict:
        """Every knob at its baseline; a training space's batch size at its smallest value (the
        training report's reference is the largest fp32 batch without checkpointing that fits)."""
        config = {name: knobs.REGISTRY[name].baseline for name in self.domains}
        if self.task == "train":
            domain = self.domains["batch_size"]
            config["batch_size"] = int(min(domain.choices) if domain.choices is not None else domain.low)
        return config


def resolve_space_path(ref: str | os.PathLike | None, task: str = "infer") -> Path:
    ref = (DEFAULT_SPACE if task == "infer" else task) if ref is None else os.fspath(ref)
    path = Path(ref)
    if not path.exists() and path.suffix == "" and os.sep not in ref:
        path = SPACES_DIR / f"{ref}.yaml"
    if not path.is_file():
        bundled = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise ConfigError(f"Search space file {ref} not found. Expected a YAML file path or one of {bundled}.")
    return path


def read_yaml(path: Path, where: str):
    """A YAML file's content; malformed YAML is a ConfigError naming `where` and the line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from exc


def load_space(ref: str | os.PathLike | dict | None = None, device: str = "cpu", task: str = "infer") -> Space:
    """The space of `task`: "infer" (default space: search_spaces/default.yaml) or "train"
    (search_spaces/train.yaml). A knob of the other task is an error, not silently ignored."""
    if task not in knobs.TASKS:
        raise ConfigError(f"task must be one of [{', '.join(knobs.TASKS)}]. Got {task!r}.")
    if isinstance(ref, dict):  # a config file's inline space (search_config)
        raw, where, source = ref, "the inline space", "inline"
    else:
        path = resolve_space_path(ref, task)
        where, source = (str(ref) if ref is not None else f"search_spaces/{path.name}"), str(path)
        raw = read_yaml(path, where)
    if raw is None or raw == {}:
        raise ConfigError(f"{where} has no knobs: a search would only measure the reference. List at least one, "
                          f"e.g. 'batch_size: [1, 8, 32]'.")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must map knob names to domains. Got a {type(raw).__name__}.")
    unknown = [k for k in raw if k not in knobs.REGISTRY]
    if unknown:
        raise ConfigError(
            f"The '{unknown[0]}' entry of {where} is not a knob. Expected one of [{', '.join(knobs.REGISTRY)}]."
        )
    task_knobs = [name for name, knob in knobs.REGISTRY.items() if task in knob.tasks]
    for name in raw:
        if name not in task_knobs:
            other = "an inference" if task == "train" else "a training"
            raise ConfigError(
                f"The '{name}' entry of {where} is {other} knob; {option('task', task)} searches "
                f"[{', '.join(task_knobs)}]. Remove it, or search it with "
                f"{option('task', 'infer' if task == 'train' else 'train')}."
            )
    space = Space(domains={}, source=source, task=task)
    for name in task_knobs:
        knob = knobs.REGISTRY[name]
        if name in raw:
            domain = _domain(knob, raw[name], where)
            if task == "train" and knob.train_choices and domain.choices is not None:
                for value in domain.choices:
                    if value not in knob.train_choices:
                        raise ConfigError(f"The '{name}' entry of {where} must be one of "
                                          f"[{', '.join(knob.train_choices)}] for {option('task', 'train')}. Got {value!r}.")
            domain = _drop_unavailable(knob, domain, device, where, space.notes)
            if not (task == "train" and name == "batch_size"):
                domain = _with_baseline(knob, domain, where, space.notes)
        else:
            domain = Domain(name, choices=(knob.baseline,))
        space.domains[name] = domain
    return space


def _domain(knob: knobs.Knob, value, where: str) -> Domain:
    entry = f"The '{knob.name}' entry of {where}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{entry} must list at least one value, {knob.describe_domain()}. Got [].")
        if len(set(map(str, value))) != len(value):
            raise ConfigError(f"{entry} lists a value twice. Got {value!r}.")
        parsed = [knob.parse(item) for item in value]
        for item, raw in zip(parsed, value):
            if not knob.contains(item):
                raise ConfigError(f"{entry} must contain only values {knob.describe_domain()}. Got {raw!r}.")
        # `cores` may equal a number the list also gives (2 on a 2-core machine): one value, once
        return Domain(knob.name, choices=tuple(dict.fromkeys(int(v) if knob.integer else v for v in parsed)))
    if isinstance(value, dict):
        if not knob.numeric:
            raise ConfigError(f"{entry} must be a list of values, {knob.describe_domain()}. Got a mapping {value!r}.")
        extra = sorted(set(value) - {"low", "high", "step", "log"})
        if extra or "low" not in value or "high" not in value:
            raise ConfigError(
                f"{entry} must be a mapping with 'low' and 'high' and optionally 'step' or 'log'. Got {value!r}."
            )
        low, high = knob.parse(value["low"]), knob.parse(value["high"])
        for bound, raw in ((low, value["low"]), (high, value["high"])):
            if not knob.contains(bound):
                raise ConfigError(f"{entry} must have low and high {knob.describe_domain()}. Got {raw!r}.")
        if low > high:
            raise ConfigError(f"{entry} must have low <= high. Got low={low!r}, high={high!r}.")
        step, log = value.get("step"), value.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{entry} must have 'log' true or false. Got {log!r}.")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
                                 or (knob.integer and not float(step).is_integer())):
            kind = "a positive integer" if knob.integer else "a positive number"
            raise ConfigError(f"{entry} must have 'step' {kind}. Got {step!r}.")
        if step is not None and log:
            raise ConfigError(f"{entry} cannot have both 'step' and 'log'. Got {value!r}.")
        return Domain(knob.name, low=low, high=high, step=step, log=log)
    raise ConfigError(
        f"{entry} must be a list (categorical) or a mapping {{low, high, step|log}} (numeric), "
        f"{knob.describe_domain()}. Got {value!r}."
    )


def _drop_unavailable(knob: knobs.Knob, domain: Domain, device: str, where: str, notes: list[str]) -> Domain:
    if domain.choices is None:
        high = domain.high
        while knob.integer and high > domain.low and knob.unavailable(int(high), device):
            high -= 1
        if high != domain.high:
            notes.append(f"{knob.name} range of {where} capped at {high:g}: {knob.unavailable(int(domain.high), device)}.")
            return Domain(knob.name, low=domain.low, high=high, step=domain.step, log=domain.log)
        return domain
    kept = []
    for value in domain.choices:
        reason = knob.unavailable(value, device)
        if reason:
            notes.append(f"{knob.name}={value} dropped from {where}: {reason}.")
        else:
            kept.append(value)
    if not kept:
        raise ConfigError(
            f"The '{knob.name}' entry of {where} has no value that runs on this {device} machine. "
            f"Got {list(domain.choices)!r}; see the warnings above."
        )
    return Domain(knob.name, choices=tuple(kept))


def _with_baseline(knob: knobs.Knob, domain: Domain, where: str, notes: list[str]) -> Domain:
    """The reference trial (every knob at its baseline) must be expressible in the space."""
    if domain.choices is not None:
        if knob.baseline in domain.choices:
            return domain
        notes.append(f"{knob.name}={knob.baseline} added to {where}: the reference trial uses it.")
        return Domain(knob.name, choices=(knob.baseline, *domain.choices))
    if domain.low <= knob.baseline <= domain.high and (
        domain.step is None or (knob.baseline - domain.low) % domain.step == 0
    ):
        return domain
    raise ConfigError(
        f"The '{knob.name}' entry of {where} must include the reference value {knob.baseline!r}. "
        f"Got {domain.describe()}; widen the range or use a list."
    )


def fit_pipeline(space: Space, pipeline, explicit: bool) -> None:
    """Drop the values of knobs that cannot change this pipeline's model (Knob.requires: trim_padding without
    a padding mask): with a warning where the user's space file asks for them (`explicit`), quietly from a
    bundled space, which lists them for the pipelines they fit."""
    log = logging.getLogger("autoopt")
    for name, domain in list(space.domains.items()):
        knob = knobs.REGISTRY[name]
        values = [v for v in (domain.choices or ()) if v != knob.baseline]
        if values and (reason := knob.requires(pipeline)):
            (log.warning if explicit else log.info)("%s=%s dropped from %s: %s.", name, ", ".join(map(str, values)),
                                                    space.source, reason)
            space.domains[name] = Domain(name, choices=(knob.baseline,))


def fit_checkpointing(space: Space, found: str, n_blocks: int, explicit: bool) -> None:
    """Checkpointing values the model's `n_blocks` repeated blocks (`found`) cannot carry: an error in
    the user's space file (`explicit`), dropped with a warning from the bundled default space."""
    from ..knobs.checkpointing import every

    log = logging.getLogger("autoopt")
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
