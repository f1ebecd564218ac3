"""`autoopt.load(DIR)`: a predict callable for an exported bundle, with the runtime settings it was
measured with (threads, session options, glibc malloc thresholds) and the reference model's output
structure. The bundle's format (runtimes.ExportFormat) knows how to load its file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

MANIFEST_KEYS = ("format", "model_file", "config", "inputs", "outputs", "runtime")  # what loading a bundle reads


def read_manifest(path, who: str) -> dict:
    """The manifest of the bundle at `path`; a ConfigError naming `who` asked and what is missing otherwise."""
    bundle = Path(path)
    if not (bundle / "autoopt.json").is_file():
        what = "does not exist" if not bundle.exists() else "has no autoopt.json"
        raise ConfigError(f"{who}: the folder {what}. Expected a bundle written by `autoopt export` or "
                          "`autoopt search --export` (a model file and autoopt.json).")
    manifest_file = bundle / "autoopt.json"
    again = "Export the trial again with `autoopt export` (a bundle is written whole or not at all)."
    try:
        manifest = json.loads(manifest_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{who}: {manifest_file} is not autoopt's manifest (not JSON: {exc}). The bundle was "
                          f"changed after its export, or the folder is not a bundle. {again}") from None
    except OSError as exc:
        raise ConfigError(f"{who}: cannot read {manifest_file} ({exc.strerror or exc}).") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ConfigError(f"{who}: {manifest_file} lacks {', '.join(missing)}: it is not a manifest written by "
                          f"`autoopt export`. {again}")
    from ..runtimes import FORMATS, export_format

    if manifest["format"] not in FORMATS:
        raise ConfigError(f"{who}: {manifest_file} names format {manifest['format']!r}; this autoopt loads "
                          f"[{', '.join(FORMATS)}]. Upgrade autoopt, or {again[0].lower()}{again[1:]}")
    for name in (manifest["model_file"], *export_format(manifest["format"]).companions):
        if not (bundle / name).is_file():
            raise ConfigError(f"{who}: the bundle's model file {bundle / name} is missing (its manifest names it). "
                              f"Copy the whole bundle folder, or {again[0].lower()}{again[1:]}")
    return manifest


def load(path):
    from torch.utils import _pytree as pytree

    from ..trial.measure import pin_allocator
    from ..runtimes import export_format

    bundle = Path(path)
    manifest = read_manifest(path, f"autoopt.load({str(path)!r})")
    spec = pytree.treespec_loads(manifest["outputs"]["pytree"])
    pin_allocator(manifest["runtime"].get("environment", {}))  # the malloc settings it was measured with (process-wide)
    return export_format(manifest["format"]).load(bundle, manifest, spec)
