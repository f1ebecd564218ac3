"""The runtime registry: each runtime turns a prepared nn.Module into a `predict` callable (see base)."""

from __future__ import annotations

from types import ModuleType

from . import eager, inductor, onnxruntime, torchscript
from .base import BuildContext, Built, Prepared

# compile_mode value -> the runtime module that builds it (the inductor modes share one module).
RUNTIMES: dict[str, ModuleType] = {
    "eager": eager,
    "torchscript": torchscript,
    "inductor": inductor,
    "inductor_max_autotune": inductor,
    "inductor_reduce_overhead": inductor,
    "onnxruntime": onnxruntime,
}


def get(name: str) -> ModuleType:
    return RUNTIMES[name]


__all__ = ["RUNTIMES", "get", "BuildContext", "Built", "Prepared"]
