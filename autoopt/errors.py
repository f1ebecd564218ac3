"""The small exception tree. Every user-facing problem is an AutoOptError with a one-line message.

A message names the user's options with `option(name, value)`: the Python API reads them as its
keywords (`export='onnx'`), the command line as its flags (`--export onnx`), from one message.
"""

from __future__ import annotations

import re

_OPTION = re.compile("\x02([^\x1f\x03]+)(?:\x1f([^\x1f]*)\x1f([^\x03]*))?\x03")
_UNSET = object()


def option(name: str, value=_UNSET) -> str:
    """An option (and its value) inside an error message, spelled for whoever reads it."""
    if value is _UNSET:
        return f"\x02{name}\x03"
    return f"\x02{name}\x1f{value}\x1f{value!r}\x03"


def render(text: str, cli: bool = False) -> str:
    """The message with its options spelled as keywords (`name`, `name='value'`) or as flags
    (`--name`, `--name value`)."""
    def spell(match: re.Match) -> str:
        name, plain, python = match.groups()
        if cli:
            flag = "--" + name.replace("_", "-")
            return flag if plain is None else f"{flag} {plain}"
        return name if plain is None else f"{name}={python}"

    return _OPTION.sub(spell, text)


class AutoOptError(Exception):
    """Base class for errors autoopt reports to the user; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __str__(self) -> str:
        return render(super().__str__())

    def for_cli(self) -> str:
        return render(super().__str__(), cli=True)


class ConfigError(AutoOptError):
    """Invalid user input: an option's value, a search-space file, a pipeline file."""

    exit_code = 2


class PipelineError(ConfigError):
    """A pipeline file that is missing, does not import, or breaks the pipeline contract."""


class ExportError(AutoOptError):
    """An export could not be written or did not verify; nothing was left behind."""


class Unsupported(AutoOptError):
    """A configuration that cannot run here; the trial is PRUNED with this reason, not FAILED.

    `scope` names the knob values that determine the failure (e.g. {"quantization": "static_int8",
    "compile_mode": "eager"}): the sampler never proposes another configuration within it.
    """

    def __init__(self, message: str, scope: dict | None = None):
        super().__init__(message)
        self.scope = dict(scope or {})
