"""Saved programs as the model (Pipeline(model_form=...), which `autoopt search FILE.pt2 / FILE.pt` writes).

A torch.export program or a TorchScript module has no nn.Linear or nn.Conv modules to prune or to swap for
int8 ones: its layers are graph ops (torch.export) or compiled methods (TorchScript). A knob with a model-level
transform declares the forms it changes (Knob.programs) and a runtime the forms it builds from (its PROGRAMS),
as measured on real exported and scripted models (tests/test_programs.py). The space is fitted to the form
before the first trial, with one warning line; a combination the space cannot rule out alone (quantization on
a runtime that does not realize it) is pruned at build time with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging

from .. import knobs, runtimes
from ..errors import ConfigError, Unsupported

FORMS = {"exported": "a torch.export program", "scripted": "a TorchScript program"}


def fit_space(space, pipeline, device: str, task: str) -> None:
    """Drop from `space` the values that cannot change `pipeline`'s program: runtimes that cannot build it, knobs
    that rewrite nn.Module layers (unless a kept runtime realizes them on the graph), then the knobs that only
    qualify a dropped one (pruning_method after pruning_amount)."""
    form = pipeline.model_form
    if form == "module":
        return
    what = f"{pipeline.name} is {FORMS[form]}"
    if task != "infer":
        raise ConfigError(f"{what}: autoopt searches its inference (--task infer). Training needs the nn.Module: "
                          "write a pipeline file whose build_model returns it.")
    space.model_form, uncaptured, rewriting, idle = form, [], [], []
    modes = _keep(space, "compile_mode", lambda mode: form in runtimes.get(mode).PROGRAMS, uncaptured)
    for name in list(space.domains):
        if name != "compile_mode" and form not in knobs.REGISTRY[name].programs:
            _keep(space, name, functools.partial(_realized, name, modes=modes, space=space, device=device), rewriting)
    for name in list(space.domains):
        knob = knobs.REGISTRY[name]
        if knob.relevant_in and not _ever_relevant(knob, space):
            _keep(space, name, lambda value: False, idle)
    parts = [f"{', '.join(values)} ({why})" for values, why in (
        (uncaptured, "cannot build it"), (rewriting, "rewrite nn.Module layers"), (idle, "nothing left to qualify")) if values]
    if parts:
        logging.getLogger("autoopt").warning("%s, not an nn.Module: dropped from the space: %s.", what, "; ".join(parts))


def conflict(form: str, config: dict) -> str | None:
    """Why `config` cannot change a model of `form` (a runtime that cannot build it; a knob that rewrites nn.Module
    layers on a runtime that does not realize it on the graph), or None: the trial is pruned before any work."""
    found = _conflict(form, config)
    return found and found[0]


def check_build(pipeline, config: dict) -> None:
    """conflict() of a build in a worker (an enqueued or exported configuration too): Unsupported, before any work."""
    if found := _conflict(getattr(pipeline, "model_form", "module"), config):
        raise Unsupported(*found)


def _conflict(form: str, config: dict) -> tuple[str, dict] | None:
    """(the reason, the knob values that decide it) or None."""
    if form == "module":
        return None
    mode = config.get("compile_mode", "eager")
    if form not in runtimes.get(mode).PROGRAMS:
        return f"compile_mode={mode} cannot build {FORMS[form]}", {"compile_mode": mode}
    for name, value in knobs.canonical(config).items():
        knob = knobs.REGISTRY.get(name)
        if knob is None or value == knob.baseline or form in knob.programs or name in runtimes.get(mode).REALIZES:
            continue
        others = [m for m in runtimes.MODES if name in runtimes.get(m).REALIZES and form in runtimes.get(m).PROGRAMS]
        return (f"{name}={value} on {mode} rewrites nn.Module layers, which {FORMS[form]} does not have"
                + (f"; {', '.join(others)} realize it on the program's graph" if others else ""),
                {name: value, "compile_mode": mode})
    return None


def _keep(space, name: str, fits, dropped: list) -> tuple:
    """Narrow knob `name`'s domain to its baseline and the values that `fits`; what went is added to `dropped`."""
    domain = space.domains.get(name)
    if domain is None:
        return ()
    baseline = knobs.REGISTRY[name].baseline
    values = domain.choices if domain.choices is not None else (domain.low, domain.high)
    lost = [v for v in values if v != baseline and not fits(v)]
    if domain.choices is None and lost:  # a range keeps its baseline only: its ends stand for its values
        space.domains[name] = dataclasses.replace(domain, choices=(baseline,), low=None, high=None, step=None, log=False)
        dropped.append(f"{name}={domain.describe()}")
    elif lost:
        space.domains[name] = dataclasses.replace(domain, choices=tuple(v for v in domain.choices if v not in lost))
        dropped.append(f"{name}={'/'.join(map(str, lost))}")
    return space.domains[name].choices or ()


def _realized(name: str, value, modes: tuple, space, device: str) -> bool:
    """Whether a kept runtime realizes knob `name` at `value` itself (on the program's graph), without a conflict."""
    base = space.reference_config()
    return any(name in runtimes.get(mode).REALIZES and knobs.conflict({**base, name: value, "compile_mode": mode},
                                                                       device) is None for mode in modes)


def _ever_relevant(knob, space) -> bool:
    """Whether some combination of the values left for the knobs that make `knob` relevant makes it relevant."""
    names = [n for n in knob.relevant_in if n in space.domains]
    pools = [space.domains[n].choices or (space.domains[n].low, space.domains[n].high) for n in names]
    base = space.reference_config()
    return any(knob.relevant({**base, **dict(zip(names, combo))}) for combo in itertools.product(*pools))
