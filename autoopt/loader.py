"""`autoopt.load(DIR)`: a predict callable for an exported bundle, with the runtime settings it was
measured with (threads, session options, glibc malloc thresholds) and the reference model's output
structure. The bundle's format (runtimes.ExportFormat) knows how to load its file."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def read_manifest(path, who: str) -> dict:
    """The manifest of the bundle at `path`; a ConfigError naming `who` asked and what is missing otherwise."""
    bundle = Path(path)
    if not (bundle / "autoopt.json").is_file():
        what = "does not exist" if not bundle.exists() else "has no autoopt.json"
        raise ConfigError(f"{who}: the folder {what}. Expected a bundle written by `autoopt export` or "
                          "`autoopt search --export` (a model file and autoopt.json).")
    return json.loads((bundle / "autoopt.json").read_text())


def load(path):
    from torch.utils import _pytree as pytree

    from .measure import pin_allocator
    from .runtimes import export_format

    bundle = Path(path)
    manifest = read_manifest(path, f"autoopt.load({str(path)!r})")
    spec = pytree.treespec_loads(manifest["outputs"]["pytree"])
    pin_allocator(manifest["runtime"].get("environment", {}))  # the malloc settings it was measured with (process-wide)
    return export_format(manifest["format"]).load(bundle, manifest, spec)
