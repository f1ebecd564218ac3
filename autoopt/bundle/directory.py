"""The bundle directory: checked writable before any work (check_out), filled with the runtime's artifact
under the names its format gives them (place_files), and the example inputs `autoopt bench` re-times it on."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError, option

EXAMPLE_INPUTS = "example_inputs.npz"  # a few rows of the pipeline's make_inputs, in input order (autoopt bench)


def place_files(spec, artifact: str, folder: Path) -> set[Path]:
    """The runtime's artifact (and the companions beside it) copied into `folder` under the names a bundle of
    format `spec` gives them; returns their paths there."""
    artifact_path = Path(artifact).resolve()
    model_file = folder / spec.model_file
    shipped = {model_file, *(folder / c for c in spec.companions)}
    for target in shipped:
        source = artifact_path if target == model_file else artifact_path.parent / target.name
        if source != target:
            shutil.copyfile(source, target)
    return shipped


def check_out(out: str | os.PathLike) -> Path:
    """The bundle directory `out`, resolved, once it is known that a bundle can be written there: absent or empty,
    and a directory can be made in it or its nearest existing parent (tried, then undone: permission bits do not
    tell for root, /proc or a read-only mount). A ConfigError otherwise, before any work."""
    out = Path(out).expanduser().resolve()
    where = f"{option('out')} {out}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{where} is a file. Expected a directory for the bundle: give a new path.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{where} exists and is not empty. Choose a new directory or empty it.")
    made = []
    try:
        for folder in [*reversed(out.parents), out]:
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        tempfile.TemporaryDirectory(dir=out).cleanup()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot write there ({exc.strerror or type(exc).__name__}"
                          f"{f' at {exc.filename}' if exc.filename else ''}). Give a writable directory.") from None
    finally:
        for folder in reversed(made):
            folder.rmdir()
    return out
