"""The runtime registry: each runtime turns a prepared nn.Module into a `predict` callable (see base).

Adding a runtime: its module (satisfying `base.Runtime`), one line below, and its own test; the
conformance suite runs it, and an `EXPORT` format makes it exportable, loadable and logged to MLflow.
"""

from __future__ import annotations

from . import eager, inductor, onnxruntime, openvino, torchscript
from .base import BuildContext, Built, ExportFormat, Prepared, Runtime

# compile_mode value -> the runtime module that builds it (the inductor modes share one module).
RUNTIMES: dict[str, Runtime] = {
    "eager": eager,
    "torchscript": torchscript,
    "inductor": inductor,
    "inductor_max_autotune": inductor,
    "inductor_reduce_overhead": inductor,
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


def get(name: str) -> Runtime:
    return RUNTIMES[name]


def export_format(name: str) -> ExportFormat:
    """The ExportFormat named `name` (a key of FORMATS)."""
    return RUNTIMES[FORMATS[name]].EXPORT


__all__ = ["RUNTIMES", "FORMATS", "get", "export_format", "BuildContext", "Built", "ExportFormat", "Prepared",
           "Runtime"]
