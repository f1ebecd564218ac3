"""The options of a search, validated once: the CLI and the Python API build the same `SearchOptions`.

`SearchOptions.parse(**raw)` takes what a user wrote (strings with units such as "100ms", or plain
numbers from Python) and returns normalized values, or raises a ConfigError that names the option as
its reader knows it (`target_latency` in Python, `--target-latency` on the command line).
"""

from __future__ import annotations

import difflib
from dataclasses import make_dataclass

from .errors import ConfigError, option
from .option_table import DEFAULTS, TABLE, Option
from .targets import Targets


def _parse(cls, **raw) -> "SearchOptions":
    """Validate what the user passed (option_table.TABLE names them); every problem is a ConfigError."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], DEFAULTS, n=1)
        hint = f" Did you mean {option(close[0])}?" if close else ""
        raise ConfigError(f"{option(unknown[0])} is not a search option. Expected one of "
                          f"[{', '.join(DEFAULTS)}].{hint}")
    given = {**DEFAULTS, **raw}
    for name in ("out", "register"):
        if given[name] is not None and given["export"] is None:
            from .runtimes import FORMATS

            first = "onnx" if "onnx" in FORMATS else next(iter(FORMATS))  # the one a user would try first
            others = [f for f in FORMATS if f != first]
            raise ConfigError(f"{option(name)} belongs to {option('export')}, which was not given. Add "
                              f"{option('export', first)} (or {', '.join(others)}), or drop {option(name)}.")
    values = {o.name: o.kind.parse(given[o.name], o) for o in TABLE}
    if values["export"] is not None and values["task"] == "train":
        raise ConfigError(f"{option('export')} ships an inference model; {option('task', 'train')} searches "
                          f"the training step. Drop {option('export')}, or search with {option('task', 'infer')}.")
    values["memory_basis"] = _memory_basis(values["memory_basis"], values["task"], values["device"])
    values["warm_start"] = values["warm_start"] and values["sampler"] != "grid"  # the grid visits every combination
    fields, targets = {}, {}
    for o in TABLE:
        into, _, attribute = o.attribute.rpartition(".")
        (targets if into == "targets" else fields)[attribute] = values[o.name]
    return cls(targets=Targets(**targets), **fields)


def _as_keywords(self) -> dict:
    """The keywords that `parse` turns into these options (every option: defaults included)."""
    return {o.name: o.kind.keyword(_value(self, o)) for o in TABLE}


def _value(options, o: Option):
    into, _, attribute = o.attribute.rpartition(".")
    return getattr(options.targets if into == "targets" else options, attribute)


def _docstring() -> str:
    lines = ["A search's options, normalized; built by `parse` from the keywords of option_table.TABLE, whose defaults",
             "are the one place defaults live.", ""]
    for o in TABLE:
        text = o.doc or o.help.rstrip(".")
        where = f" (-> {o.attribute})" if o.attribute != o.name else ""
        lines.append(f"{o.name}{where}: {text[0].lower()}{text[1:]}; default {o.default!r}.")
    return "\n".join(lines)


SearchOptions = make_dataclass(
    "SearchOptions", [("targets", Targets), *((o.attribute, o.kind.python) for o in TABLE if "." not in o.attribute)],
    frozen=True, namespace={"parse": classmethod(_parse), "as_keywords": _as_keywords, "__doc__": _docstring()})
SearchOptions.__module__ = __name__  # make_dataclass names no module before Python 3.12


def _memory_basis(basis: str | None, task: str, device: str) -> str:
    """"serving" for inference on the CPU unless told otherwise; "growth" where serving means nothing here."""
    if basis is None:
        return "serving" if task == "infer" and device == "cpu" else "growth"
    if basis == "serving" and (task != "infer" or device != "cpu"):
        what = f"{option('task', 'train')} measures a training step" if task != "infer" else \
            f"{option('device', device)} measures device memory"
        raise ConfigError(f"{option('memory_basis', 'serving')} is the resident memory of a CPU process serving a "
                          f"bundle; {what}. Use {option('memory_basis', 'growth')}.")
    return basis
