"""The runtime registry: each runtime turns a prepared nn.Module into a `predict` callable (see base).

Adding a runtime: its module (satisfying `base.Runtime`; base.DEFAULTS fills what it leaves out), one line in
RUNTIMES (or, from another package, an entry of $AUTOOPT_RUNTIMES), and its own test. Everything else reads the
registry when it is used: the compile_mode knob's values (MODES), the export formats (FORMATS) and so
`--export`/`--format`, the bundle, its verification, `autoopt.load`, the packages a bundle records and its MLflow
model pins (packages()); the conformance suite runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import aoti, eager, inductor, onnxruntime, openvino, torchscript
from .base import BuildContext, Built, ExportFormat, Prepared, Runtime, complete

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


def load_plugins() -> None:
    """Runtimes of other packages: $AUTOOPT_RUNTIMES, comma-separated `compile_mode=package.module` entries, added to
    RUNTIMES in every process that imports the registry (the search's workers inherit the variable)."""
    import importlib
    import os

    for entry in filter(None, os.environ.get("AUTOOPT_RUNTIMES", "").replace(" ", "").split(",")):
        mode, _, module = entry.partition("=")
        if not mode or not module:
            raise ValueError(f"AUTOOPT_RUNTIMES: {entry!r} is not compile_mode=package.module")
        RUNTIMES.setdefault(mode, importlib.import_module(module))


load_plugins()


def get(name: str) -> Runtime:
    return complete(RUNTIMES[name])


class _Modes(Sequence):
    """The compile_mode values: RUNTIMES' keys, read when used (a runtime registered later is one of them)."""

    def __getitem__(self, index):
        return tuple(RUNTIMES)[index]

    def __len__(self) -> int:
        return len(RUNTIMES)

    def __repr__(self) -> str:
        return repr(tuple(RUNTIMES))


class _Formats(Mapping):
    """Export format name -> the compile_mode whose runtime writes it (what was measured is what ships), sorted by
    name; read from RUNTIMES when used."""

    def _table(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for mode in RUNTIMES:
            if get(mode).EXPORT is not None:
                out.setdefault(get(mode).EXPORT.name, mode)
        return dict(sorted(out.items()))

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


MODES: Sequence[str] = _Modes()
FORMATS: Mapping[str, str] = _Formats()


def format_for(compile_mode: str) -> str | None:
    """The export format that ships a trial of `compile_mode`: its runtime's own, else one that carries it."""
    for name, mode in FORMATS.items():
        if mode == compile_mode:
            return name
    return next((name for name, mode in FORMATS.items() if compile_mode in get(mode).EXPORT.carries), None)


def check_carried(model, config: dict, ctx: BuildContext) -> None:
    """A trial of a runtime that writes no file ships in the format that carries it (format_for): that format's
    `admits` prunes it, before the trial's own build, when it cannot ship this model."""
    name = format_for(config["compile_mode"])
    spec = export_format(name) if name else None
    if spec is not None and config["compile_mode"] in spec.carries and spec.admits is not None:
        spec.admits(model, config, ctx)


def export_format(name: str) -> ExportFormat:
    """The ExportFormat named `name` (a key of FORMATS)."""
    return get(FORMATS[name]).EXPORT


def packages() -> tuple[str, ...]:
    """The packages every export format serves with or is built with (a bundle records their versions)."""
    return tuple(sorted({p for name in FORMATS for p in (*export_format(name).packages, *export_format(name).tools)}))


__all__ = ["RUNTIMES", "MODES", "FORMATS", "get", "export_format", "format_for", "check_carried", "packages", "load_plugins",
           "BuildContext", "Built", "ExportFormat", "Prepared", "Runtime"]
