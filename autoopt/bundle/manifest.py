"""The bundle's manifest (autoopt.json): one dataclass, read and written here only.

The JSON document is also a contract with code that cannot import autoopt: a format's plain loader (run by
the verifier and by the MLflow pyfunc) reads it as a dict, so its keys are the field names below and
`as_dict()` is what they get. A `Manifest` reads like that dict too (`manifest["format"]`): `ExportResult.manifest`
was the dict before it was typed."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError

FILE = "autoopt.json"
_OPTIONAL = {"metadata": {"omit_none": True}}  # written only once known (the others are written even when null)


@dataclass
class Manifest:
    # What loading the model file takes (model_manifest in bundle/export.py writes these).
    format: str
    model_file: str
    config: dict  # the trial's {knob: value}
    inputs: list  # [{name, shape (with a "batch" axis), dtype}] in input order
    outputs: dict  # {paths, pytree}: the reference model's output structure
    runtime: dict  # threads, the format's own settings, the malloc environment, fixed_batch for a one-batch package
    # What the trial measured and how the bundle was made.
    metrics: dict | None = None
    remeasured: dict | None = None  # the end-of-search interleaved figures, when the trial took part
    measured_as: str | None = None  # the runtime the trial ran on (differs from config's when the format carried it)
    build_s: float | None = None
    built_by: str | None = None
    float_layers: list | None = None
    versions: dict | None = None
    machine: dict | None = None  # the machine that built and verified the bundle
    source: dict | None = None
    padding: dict | None = field(default=None, **_OPTIONAL)
    verification: dict | None = field(default=None, **_OPTIONAL)
    mlflow_model_uri: str | None = field(default=None, **_OPTIONAL)
    plain_loader: str | None = field(default=None, **_OPTIONAL)  # the logged model's copy names its loader
    extra: dict = field(default_factory=dict, **_OPTIONAL)  # keys of another autoopt version, kept as they were

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size a package compiled for it runs (None: any batch size)."""
        return self.runtime.get("fixed_batch")

    @property
    def environment(self) -> dict:
        """The malloc settings the trial was measured with."""
        return self.runtime.get("environment", {})

    @property
    def recorded(self) -> dict:
        """The search's figures of the trial: the interleaved re-measurement's where it took part."""
        return self.remeasured or self.metrics or {}

    @property
    def verified(self) -> dict:
        return self.verification or {}

    def as_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif value is not None or not f.metadata.get("omit_none"):
                out[f.name] = value
        return out

    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def get(self, key: str, default=None):
        return self.as_dict().get(key, default)

    @classmethod
    def from_dict(cls, document: dict) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in document.items() if k in known},
                   extra={k: v for k, v in document.items() if k not in known})

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


REQUIRED = tuple(f.name for f in fields(Manifest) if f.default is MISSING and f.default_factory is MISSING)  # what loading reads


def read(path, who: str) -> Manifest:
    """The manifest of the bundle at `path`; a ConfigError naming `who` asked and what is wrong otherwise."""
    bundle = Path(path)
    manifest_file = bundle / FILE
    if not manifest_file.is_file():
        what = "does not exist" if not bundle.exists() else f"has no {FILE}"
        raise ConfigError(f"{who}: the folder {what}. Expected a bundle written by `autoopt export` or "
                          f"`autoopt search --export` (a model file and {FILE}).")
    again = "Export the trial again with `autoopt export` (a bundle is written whole or not at all)."
    try:
        document = json.loads(manifest_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{who}: {manifest_file} is not autoopt's manifest (not JSON: {exc}). The bundle was "
                          f"changed after its export, or the folder is not a bundle. {again}") from None
    except OSError as exc:
        raise ConfigError(f"{who}: cannot read {manifest_file} ({exc.strerror or exc}).") from None
    missing = [k for k in REQUIRED if not isinstance(document, dict) or k not in document]
    if missing:
        raise ConfigError(f"{who}: {manifest_file} lacks {', '.join(missing)}: it is not a manifest written by "
                          f"`autoopt export`. {again}")
    from ..runtimes import FORMATS, export_format

    manifest = Manifest.from_dict(document)
    if manifest.format not in FORMATS:
        raise ConfigError(f"{who}: {manifest_file} names format {manifest.format!r}; this autoopt loads "
                          f"[{', '.join(FORMATS)}]. Upgrade autoopt, or {again[0].lower()}{again[1:]}")
    for name in (manifest.model_file, *export_format(manifest.format).companions):
        if not (bundle / name).is_file():
            raise ConfigError(f"{who}: the bundle's model file {bundle / name} is missing (its manifest names it). "
                              f"Copy the whole bundle folder, or {again[0].lower()}{again[1:]}")
    return manifest
