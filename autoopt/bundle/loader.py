"""`autoopt.load(DIR)`: a predict callable for an exported bundle, with the runtime settings it was
measured with (threads, session options, glibc malloc thresholds) and the reference model's output
structure. The bundle's format (runtimes.ExportFormat) knows how to load its file."""

from __future__ import annotations

from pathlib import Path


def load(path):
    from torch.utils import _pytree as pytree

    from . import manifest as bundle_manifest
    from ..runtimes import export_format
    from ..trial.measure import pin_allocator

    manifest = bundle_manifest.read(path, f"autoopt.load({str(path)!r})")
    spec = pytree.treespec_loads(manifest.outputs["pytree"])
    pin_allocator(manifest.environment)  # the malloc settings it was measured with (process-wide)
    return export_format(manifest.format).load(Path(path), manifest, spec)
