"""The knob interface: a knob is data (name, domain, baseline) plus plain functions.

- `unavailable(value, device)`: why this value cannot run on this machine (checked when the search
  space is loaded: the value is dropped with a warning), or None.
- `conflict(config, device)`: why this whole combination cannot work (the trial is pruned before
  anything is built), or None.
- `relevant(config)`: whether the knob changes anything in this configuration (quant_granularity
  without quantization does not). Irrelevant knobs are set to their baseline in the canonical form
  of a configuration, so that equivalent configurations share one measurement. `relevant_in`: the
  other knob values that make it relevant (for a knob that is not at the baseline: the shared knob
  suite tests it there, where it changes something).
- `apply(model, config, ctx)`: the model-level transform, for knobs realized on the nn.Module.
  Knobs realized elsewhere (by the runtime, by the measurement) leave it None; a runtime that
  realizes a knob itself lists it in its REALIZES set and `apply` is skipped for it.
- `requires(pipeline)`: why this knob cannot change this pipeline's model (trim_padding without a padding
  mask), or None; its values other than the baseline are dropped from the space with the reason.
- `parse(value)`: a space file's spelling of a value -> the value (threads: `cores`, `cores/2` -> the
  cores this process may use, halved), so that a bundled space fits the machine it runs on.
- `tasks`: the tasks that search this knob ("infer", "train"); `train_choices` narrows a categorical
  knob's values for the training task (compile_mode: eager and inductor only).

Facts the search reads from the knob instead of keeping lists of knob names:
- `changes_numerics`: False for knobs that change speed but never the outputs (batch size, threads),
  so that an accuracy measured for one value holds for every other;
- `tolerance`: (minimum cosine, relative max-abs error) an exported model must reach against the
  reference when this knob is off its baseline (an approximation by design is looser); None: exact;
- `retrains`: off its baseline, the knob trains the weights anew (distillation): the model it returns
  is not an approximation of the original but a model of its own, so an export is compared with it
  (knobs.fidelity_base), within the tolerance of the knobs after it; the metric check bounds the rest;
- `warm_start`: (task, device, configuration[, CPU features]) entries of known-good settings led by
  this knob, tried right after the reference of a new study, in registry order; an entry that names CPU
  features (machine.FEATURES names, any one of them) is tried only on a CPU that has one, and first;
- `programs`: the saved-program forms ("exported": a torch.export program, "scripted": TorchScript) whose
  model the knob's values change (autoopt.study.programs): every form for a knob without a model-level transform or
  whose transform works on a program (precision: a dtype cast); () for one that rewrites nn.Module layers
  (pruning, FX quantization), kept for a program only where a runtime realizes it on the program's graph;
- `warm_value`: a value every warm-start configuration takes where the space has it and no conflict
  follows (trim_padding=on: exact, and less work wherever there is padding), or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


EXACT = (0.99999, 1e-3)  # (minimum cosine, relative max-abs error) of a model that only changed runtime


def _never(*_args) -> None:
    return None


def _always(_config: dict) -> bool:
    return True


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Knob:
    name: str
    doc: str
    baseline: Any  # the "off" value: the reference configuration uses it
    choices: tuple | None = None  # every value a categorical knob can take
    bounds: tuple[float, float] | None = None  # inclusive range of a numeric knob
    integer: bool = False
    unavailable: Callable[[Any, str], str | None] = _never
    conflict: Callable[[dict, str], str | None] = _never
    relevant: Callable[[dict], bool] = _always
    relevant_in: dict = field(default_factory=dict, hash=False)
    requires: Callable[[Any], str | None] = _never
    apply: Callable[[Any, dict, Any], Any] | None = None
    parse: Callable[[Any], Any] = _same
    spellings: str = ""  # what `parse` also accepts, for error messages
    tasks: tuple[str, ...] = ("infer",)
    train_choices: tuple | None = None
    changes_numerics: bool = True
    tolerance: tuple[float, float] | None = None
    retrains: bool = False
    warm_start: tuple[tuple, ...] = ()
    warm_value: Any = None
    programs: tuple[str, ...] = ("exported", "scripted")

    @property
    def numeric(self) -> bool:
        return self.bounds is not None

    def describe_domain(self) -> str:
        if self.numeric:
            kind = "an integer" if self.integer else "a number"
            return f"{kind} in [{self.bounds[0]:g}, {self.bounds[1]:g}]" + (f" or {self.spellings}" if self.spellings else "")
        return "one of [" + ", ".join(str(c) for c in self.choices) + "]"

    def contains(self, value: Any) -> bool:
        if self.numeric:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if self.integer and not float(value).is_integer():
                return False
            return self.bounds[0] <= value <= self.bounds[1]
        return value in self.choices
