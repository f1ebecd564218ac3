"""The small exception tree. Every user-facing problem is an AutoOptError with a one-line message."""

from __future__ import annotations


class AutoOptError(Exception):
    """Base class for errors autoopt reports to the user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(AutoOptError):
    """Invalid user input: a flag value, a search-space file, a pipeline file."""

    exit_code = 2


class PipelineError(ConfigError):
    """A pipeline file that is missing, does not import, or breaks the pipeline contract."""


class TrialError(AutoOptError):
    """A trial could not be built or measured (reported as a FAILED trial, never raised to the user)."""


class Unsupported(AutoOptError):
    """A configuration that cannot run here; the trial is PRUNED with this reason, not FAILED.

    `scope` names the knob values that determine the failure (e.g. {"quantization": "static_int8",
    "compile_mode": "eager"}): the sampler never proposes another configuration within it.
    """

    def __init__(self, message: str, scope: dict | None = None):
        super().__init__(message)
        self.scope = dict(scope or {})
