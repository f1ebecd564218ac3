"""The knob registry. Order matters: model-level `apply` transforms run in this order (pruning,
then distillation, then quantization, then precision), before the runtime builds `predict`."""

from __future__ import annotations

from . import (batch_size, checkpointing, compile_mode, distill_steps, graph_fusion, int8_layers, precision,
               pruning_amount, pruning_method, quant_granularity, quantization, threads, trim_padding)
from .base import EXACT, Knob

REGISTRY: dict[str, Knob] = {k.name: k for k in (
    pruning_amount.KNOB,
    pruning_method.KNOB,
    distill_steps.KNOB,
    quantization.KNOB,
    quant_granularity.KNOB,
    precision.KNOB,
    batch_size.KNOB,
    threads.KNOB,
    compile_mode.KNOB,
    graph_fusion.KNOB,
    checkpointing.KNOB,
    int8_layers.KNOB,  # no transform of its own: each int8 quantizer asks it which layers stay float
    trim_padding.KNOB,  # last: wraps the model every other transform produced
)}

TASKS = ("infer", "train")


def reference_config(task: str = "infer") -> dict:
    """The configuration of the reference trial: every knob of the task at its baseline (fp32, eager,
    batch 1, no checkpointing)."""
    return {name: knob.baseline for name, knob in REGISTRY.items() if task in knob.tasks}


def canonical(config: dict) -> dict:
    """The configuration with knobs that change nothing here set to their baseline: two configurations
    with the same canonical form build and measure the same thing."""
    return {name: (value if REGISTRY[name].relevant(config) else REGISTRY[name].baseline)
            for name, value in config.items()}


ALWAYS_SHOWN = ("batch_size", "compile_mode")


def describe(config: dict) -> str:
    """A short description: batch size, runtime, and every knob that differs from its baseline."""
    shown = canonical(config)
    return " ".join(f"{k}={v}" for k, v in shown.items()
                    if k in ALWAYS_SHOWN or k not in REGISTRY or v != REGISTRY[k].baseline)


def in_scope(config: dict, scope: dict) -> bool:
    """Whether a configuration (compared in canonical form) has every knob value a failure's scope names."""
    canonical_config = canonical(config)
    return all(canonical_config.get(k) == v for k, v in scope.items())


def conflict(config: dict, device: str) -> str | None:
    """Why this combination cannot work here (the trial is pruned before any build), or None."""
    for knob in REGISTRY.values():
        if knob.name in config and (reason := knob.conflict(config, device)):
            return reason
    return None


def numerics_free() -> tuple[str, ...]:
    """Knobs that change speed but never the outputs: a numerics figure holds across their values."""
    return tuple(name for name, knob in REGISTRY.items() if not knob.changes_numerics)




def fidelity_base(config: dict) -> dict:
    """The knob values of the model an export of `config` is compared with: {} (build_model's model,
    the original) unless a knob that retrains the weights is active (distill_steps after pruning);
    then that knob and every model-level knob before it: the retrained model is what the knobs after
    it (quantization, precision, the runtime) approximate."""
    shown = canonical(config)
    names = [n for n in REGISTRY if n in shown]
    active = [i for i, n in enumerate(names) if REGISTRY[n].retrains and shown[n] != REGISTRY[n].baseline]
    return {n: shown[n] for n in names[:active[-1] + 1]} if active else {}


def export_tolerance(config: dict) -> tuple[float, float]:
    """(minimum cosine, relative max-abs error) an export of `config` must reach against its fidelity
    base: the loosest tolerance of the knobs it sets off their baseline, past that base."""
    shown = canonical(config)
    base = fidelity_base(config)
    loose = [REGISTRY[k].tolerance for k, v in shown.items()
             if k in REGISTRY and k not in base and REGISTRY[k].tolerance and v != REGISTRY[k].baseline]
    return min([c for c, _ in loose], default=EXACT[0]), max([r for _, r in loose], default=EXACT[1])


def warm_start_seeds(task: str, device: str, features=()) -> list[dict]:
    """The known-good settings the knobs declare for this task and device, in registry order: first those
    that need a CPU feature this CPU has (`features`: machine.cpu_info names), then the general ones."""
    targeted, general = [], []
    for knob in REGISTRY.values():
        for t, d, seed, *needs in knob.warm_start:
            if (t, d) != (task, device):
                continue
            if not needs:
                general.append(dict(seed))
            elif set(needs[0]) & set(features):
                targeted.append(dict(seed))
    return targeted + general


def apply_model_knobs(model, config: dict, ctx, realized_by_runtime: frozenset = frozenset()):
    """Run the model-level transforms, except those the runtime realizes itself."""
    for knob in REGISTRY.values():
        if knob.apply is not None and knob.name in config and knob.name not in realized_by_runtime:
            model = knob.apply(model, config, ctx)
    return model


__all__ = ["Knob", "REGISTRY", "TASKS", "reference_config", "canonical", "describe", "in_scope", "conflict",
           "numerics_free", "fidelity_base", "export_tolerance", "warm_start_seeds", "apply_model_knobs"]
