"""The knob registry. Order matters: model-level `apply` transforms run in this order."""

from __future__ import annotations

from . import batch_size, compile_mode, precision
from .base import Knob

REGISTRY: dict[str, Knob] = {k.name: k for k in (precision.KNOB, batch_size.KNOB, compile_mode.KNOB)}


def reference_config() -> dict:
    """The configuration of the reference trial: every knob at its baseline (fp32, eager, batch 1)."""
    return {name: knob.baseline for name, knob in REGISTRY.items()}


def conflict(config: dict, device: str) -> str | None:
    """Why this combination cannot work here (the trial is pruned before any build), or None."""
    for knob in REGISTRY.values():
        if knob.name in config and (reason := knob.conflict(config, device)):
            return reason
    return None


def apply_model_knobs(model, config: dict, device: str):
    for knob in REGISTRY.values():
        if knob.apply is not None and knob.name in config:
            model = knob.apply(model, config[knob.name], device)
    return model


__all__ = ["Knob", "REGISTRY", "reference_config", "conflict", "apply_model_knobs"]
