"""A search's options in one YAML file (`autoopt search --config search.yaml`, `search(config=...)`).

The keys are the search options (`target_latency` or `target-latency`), `pipeline`, and `space`, which
is a space file's path or the space itself inline. Options given on the command line or as keywords
override the file's. A relative `pipeline` or `space` path is read from the file's own folder when it is
there, so that a config kept beside its model works from anywhere.

Every search logs the options it ran with as `search.yaml` on its study's MLflow run (the space inline,
the pipeline by path, the study name left out): `autoopt search --config search.yaml` with that file
runs the same search again as a new study.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

from .errors import ConfigError, render
from .option_table import DEFAULTS
from .options import SearchOptions
from .study.space import read_yaml

KEYS = ("pipeline", *DEFAULTS)
NEEDS_EXPORT = ("out", "register")  # checked against the merged options: --export may come from a flag
FILE_NAME = "search.yaml"  # the artifact on the study's run


def read(path: str | os.PathLike) -> dict:
    """The options of a config file by their Python names, each value checked on its own."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found. Expected a YAML file of search options, e.g. "
                          f"'target_latency: 100ms'.")
    raw = read_yaml(path, f"Config file {path}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must map search options to values, e.g. 'target_latency: 100ms'. "
                          f"Got a {type(raw).__name__}.")
    values, spelled = {}, {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in KEYS:
            close = difflib.get_close_matches(name, KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"The '{key}' entry of {path} is not a search option. Expected one of "
                              f"[{', '.join(KEYS)}].{hint}")
        if name in values:
            raise ConfigError(f"{path} gives '{name}' twice: as '{spelled[name]}' and as '{key}'. Keep one.")
        spelled[name] = key
        values[name] = _beside(path, value) if name in ("pipeline", "space") else value
    for name, value in values.items():
        _check(path, name, value)
    return values


def _beside(config: Path, value):
    """A relative path that exists beside the config file, read from there; anything else as written."""
    if isinstance(value, str) and not os.path.isabs(value) and (config.parent / value).exists():
        return str(config.parent / value)
    return value


def _check(path: Path, name: str, value) -> None:
    if name == "pipeline":
        if not isinstance(value, str):
            raise ConfigError(f"The 'pipeline' entry of {path} must be a pipeline file or a bundled name. "
                              f"Got {value!r}.")
        return
    if name == "space" and isinstance(value, dict):
        return  # an inline space: the space loader checks it with the others
    if name in NEEDS_EXPORT:
        value_check = {name: value, "export": "onnx"}
    else:
        value_check = {name: value}
    try:
        SearchOptions.parse(**value_check)
    except ConfigError as exc:  # the file's own spelling: target_latency='fast', not --target-latency fast
        raise ConfigError(f"In {path}: {render(exc.args[0])}") from exc


def merge(config: str | os.PathLike | None, pipeline, keywords: dict) -> tuple[object, dict]:
    """The pipeline and options of a search: the config file's, overridden by what was passed."""
    if config is None:
        return pipeline, keywords
    values = read(config)
    from_file = values.pop("pipeline", None)
    return (pipeline if pipeline is not None else from_file), {**values, **keywords}


def to_yaml(pipeline_source: str | None, opts: SearchOptions, study_name: str) -> str:
    """The options a search ran with (every one, defaults included, the device resolved), as a config
    file that repeats it as a new study: no `study` key; a space file inlined so the file stands alone."""
    from .version import __version__
    from .sources import CHECKED

    keywords = opts.as_keywords()
    keywords.pop("study")
    for name in CHECKED:  # a brought model's: baked into its pipeline file
        keywords.pop(name)
    keywords["space"] = _space_entry(keywords["space"], opts.task)
    head = (f"# The options of study {study_name} (autoopt {__version__}).\n"
            f"# Repeat it as a new study: autoopt search --config {FILE_NAME}\n")
    if opts.seed is None:
        head += "# No seed was given: the sampler drew its own; add 'seed: N' to sample the same way each time.\n"
    if pipeline_source is None:
        head += "# The pipeline was an in-memory Pipeline: pass it to autoopt.search(pipeline, config=...).\n"
    document = {"pipeline": pipeline_source, **keywords} if pipeline_source else keywords
    return head + yaml.safe_dump({k: v for k, v in document.items() if v is not None}, sort_keys=False)


def _space_entry(space, task: str):
    """A bundled space by its name; a space file by its content; an inline space as it is."""
    from .study.space import SPACES_DIR, resolve_space_path

    if isinstance(space, dict):
        return space
    path = resolve_space_path(space, task)
    if path.resolve().parent == SPACES_DIR.resolve():
        return path.stem
    return yaml.safe_load(path.read_text())
