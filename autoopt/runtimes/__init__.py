"""The runtime registry: each runtime turns a prepared nn.Module into a `predict` callable (see base)."""

from __future__ import annotations

from types import ModuleType

from . import eager, onnxruntime
from .base import BuildContext, Built, Prepared

RUNTIMES: dict[str, ModuleType] = {"eager": eager, "onnxruntime": onnxruntime}


def get(name: str) -> ModuleType:
    return RUNTIMES[name]


__all__ = ["RUNTIMES", "get", "BuildContext", "Built", "Prepared"]
