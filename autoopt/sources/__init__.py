"""Models brought as they are, without a pipeline file: `hf:PATH` (a Hugging Face model and its tokenizer),
`FILE.pt2` (a torch.export program) and `FILE.pt` (TorchScript).

A source writes a pipeline file from a template (sources/*_template.py) with its settings filled in as
constants: the search loads that file as any other pipeline (its workers too), `--save-pipeline FILE`
keeps it where the user says, and running that file gives the same search.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ConfigError, option

PREFIX = "hf:"
PROGRAM_SUFFIXES = (".pt2", ".pt")
SETTINGS = {"hf": ("texts", "seq_len", "labels"), "program": ("input_shape", "input_dtype")}  # what each file is written with
SPELLED = {"hf": "hf:PATH", "program": "FILE.pt2 or FILE.pt"}
CHECKED = (*SETTINGS["hf"], *SETTINGS["program"], "save_pipeline")  # the options only a brought model reads


def kind(ref) -> str | None:
    """"hf", "program", or None for a pipeline (a file, a bundled name, an in-memory Pipeline)."""
    if isinstance(ref, str) and ref.startswith(PREFIX):
        return "hf"
    if isinstance(ref, (str, os.PathLike)) and Path(ref).suffix in PROGRAM_SUFFIXES:
        return "program"
    return None


def is_source(ref) -> bool:
    return kind(ref) is not None


def check_settings(ref, settings: dict) -> None:
    """A setting given for a model that does not read it is a mistake worth one line."""
    source = kind(ref)
    for name in CHECKED:
        if settings.get(name) is None or (source and name in (*SETTINGS[source], "save_pipeline")):
            continue
        owner = " or ".join(SPELLED[k] for k, names in SETTINGS.items() if name in names)
        if source is None:
            what = f"the pipeline {getattr(ref, 'name', ref) or 'digits_cnn'} makes its own inputs"
            raise ConfigError(f"{option(name)} belongs to a model brought as {owner}; {what}. Drop it, or give {owner}.")
        takes = ", ".join(option(n) for n in SETTINGS[source])
        raise ConfigError(f"{option(name)} belongs to a model brought as {owner}; {ref} takes {takes}. Drop it.")


def pipeline_file(ref, settings: dict, save: str | os.PathLike | None = None) -> Path:
    """The pipeline file for source `ref`: written to `save` when given, else to autoopt's cache (named by
    its text, so a repeated search reuses it)."""
    if save is not None and Path(save).suffix != ".py":  # before loading the model: a typo costs nothing
        raise ConfigError(f"{option('save_pipeline', str(save))}: expected a .py file name. Got {Path(save).name!r}.")
    source = kind(ref)
    if source == "hf":
        from . import hf

        text, prefix = hf.pipeline_text(ref[len(PREFIX):], **{k: settings.get(k) for k in SETTINGS["hf"]}), "hf"
    else:
        from . import program

        text, prefix = program.pipeline_text(ref, **{k: settings.get(k) for k in SETTINGS["program"]}), "program"
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

    path = Path(cache_dir("pipelines")) / f"{prefix}_{hashlib.sha1(text.encode()).hexdigest()[:12]}.py"
    if not path.exists():  # written whole, then renamed: a concurrent search never loads half a file
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    return path
