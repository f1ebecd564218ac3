"""The runtime registry: each runtime turns a prepared nn.Module into a `predict` callable (see base).

Adding a runtime: its module (satisfying `base.Runtime`), one line below, and its own test; the
conformance suite runs it, and an `EXPORT` format makes it exportable, loadable and logged to MLflow.
"""

from __future__ import annotations

from . import aoti, eager, inductor, onnxruntime, openvino, torchscript
from .base import BuildContext, Built, ExportFormat, Prepared, Runtime

# compile_mode value -> the runtime module that builds it (the inductor modes share one module).
RUNTIMES: dict[str, Runtime] = {
    "eager": eager,
    "torchscript": torchscript,
    "inductor": inductor,
    "inductor_max_autotune": inductor,
    "inductor_reduce_overhead": inductor,
    "inductor_aot": aoti,  # AOTInductor: the inductor path that ships (export format aoti)
    "onnxruntime": onnxruntime,
    "openvino": openvino,
}


def _formats() -> dict[str, str]:
    out: dict[str, str] = {}
    for mode, runtime in RUNTIMES.items():
        if runtime.EXPORT is not None:
            out.setdefault(runtime.EXPORT.name, mode)
    return dict(sorted(out.items()))


# export format name -> the compile_mode whose runtime writes it (what was measured is what ships).
FORMATS: dict[str, str] = _formats()


def format_for(compile_mode: str) -> str | None:
    """The export format that ships a trial of `compile_mode`: its runtime's own, else one that carries it."""
    for name, mode in FORMATS.items():
        if mode == compile_mode:
            return name
    return next((name for name, mode in FORMATS.items() if compile_mode in RUNTIMES[mode].EXPORT.carries), None)


def get(name: str) -> Runtime:
    return RUNTIMES[name]


def export_format(name: str) -> ExportFormat:
    """The ExportFormat named `name` (a key of FORMATS)."""
    return RUNTIMES[FORMATS[name]].EXPORT


__all__ = ["RUNTIMES", "FORMATS", "get", "export_format", "format_for", "BuildContext", "Built", "ExportFormat", "Prepared",
           "Runtime"]
