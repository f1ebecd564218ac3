"""Models brought as they are, without a pipeline file: `hf:PATH` (a Hugging Face model and its tokenizer).

A source writes a pipeline file from a template (sources/hf_template.py) with its settings filled in as
constants: the search loads that file as any other pipeline (its workers too), `--save-pipeline FILE`
keeps it where the user says, and running that file gives the same search.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ConfigError, option

PREFIX = "hf:"
SETTINGS = ("texts", "seq_len", "labels")  # what the pipeline file is written with
CHECKED = (*SETTINGS, "save_pipeline")  # the options only a brought model reads


def is_source(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def check_settings(ref, settings: dict) -> None:
    """A setting given for a pipeline file, which makes its own inputs, is a mistake worth one line."""
    given = [name for name in CHECKED if settings.get(name) is not None]
    if given and not is_source(ref):
        name = getattr(ref, "name", ref) or "digits_cnn"  # a file, a bundled name, or an in-memory Pipeline
        raise ConfigError(f"{option(given[0])} belongs to a model brought as hf:PATH; the pipeline {name} "
                          "makes its own inputs. Drop it, or give hf:PATH.")


def pipeline_file(ref: str, settings: dict, save: str | os.PathLike | None = None) -> Path:
    """The pipeline file for source `ref`: written to `save` when given, else to autoopt's cache (named by
    its text, so a repeated search reuses it)."""
    from . import hf

    if save is not None and Path(save).suffix != ".py":  # before loading the model: a typo costs nothing
        raise ConfigError(f"{option('save_pipeline', str(save))}: expected a .py file name. Got {Path(save).name!r}.")
    text = hf.pipeline_text(ref[len(PREFIX):], **{k: settings.get(k) for k in SETTINGS})
    if save is not None:
        path = Path(save).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise ConfigError(f"{option('save_pipeline', str(save))}: cannot write there ({exc.strerror}). "
                              "Give a writable path.") from None
        return path.resolve()
    from ..cache import cache_dir

    path = Path(cache_dir("pipelines")) / f"hf_{hashlib.sha1(text.encode()).hexdigest()[:12]}.py"
    if not path.exists():  # written whole, then renamed: a concurrent search never loads half a file
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    return path
