"""Parsing of the human-friendly quantities on the command line: durations, memory sizes, fractions.

Each parser names the option it parses in its error, so that the message says what, the value, and
the accepted forms, on one line.
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError, option

_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ%]*)\s*$")

_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_BYTES = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def _split(value: object, name: str, forms: str) -> tuple[float, str]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{option(name)} must be a string such as {forms}. Got {value!r}.")
    text = str(value)
    if text.strip().startswith("-"):
        raise ConfigError(f"{option(name)} must not be negative. Got {text!r}; use a form such as {forms}.")
    match = _NUMBER.match(text)
    if not text.strip() or not match:
        raise ConfigError(f"{option(name)} is not a quantity: got {text!r}; use a form such as {forms}.")
    number = float(match.group(1))
    if not math.isfinite(number):
        raise ConfigError(f"{option(name)} must be finite. Got {text!r}; use a form such as {forms}.")
    return number, match.group(2)


def parse_duration_s(value: object, name: str = "duration") -> float:
    """'100ms', '0.1s', '250us', '30m', '2h' -> seconds. A unit is required: '100' is ambiguous."""
    forms = "'250us', '100ms', '0.1s', '30m' or '2h'"
    number, unit = _split(value, name, forms)
    if unit not in _SECONDS:
        got = "no unit" if not unit else f"unknown unit {unit!r}"
        raise ConfigError(f"{option(name)} has {got} in {str(value)!r}; use a form such as {forms}.")
    if number == 0:
        raise ConfigError(f"{option(name)} must be greater than zero. Got {str(value)!r}.")
    return number * _SECONDS[unit]


def parse_latency_ms(value: object, name: str = "target_latency") -> float:
    """Latency target in ms. Strings need a unit; a bare number (Python API) is taken as ms."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{option(name)} must be a positive number of milliseconds. Got {value!r}.")
        return float(value)
    return parse_duration_s(value, name) * 1e3


def parse_memory_mb(value: object, name: str = "target_memory") -> float:
    """'512MB', '2GiB', '1.5GB' -> MB (10**6 bytes). A bare number (Python API) is taken as MB."""
    forms = "'512MB', '1.5GB' or '2GiB'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{option(name)} must be a positive number of MB. Got {value!r}.")
        return float(value)
    number, unit = _split(value, name, forms)
    if unit.lower() not in _BYTES:
        got = "no unit" if not unit else f"unknown unit {unit!r}"
        raise ConfigError(f"{option(name)} has {got} in {str(value)!r}; use a form such as {forms}.")
    if number == 0:
        raise ConfigError(f"{option(name)} must be greater than zero. Got {str(value)!r}.")
    return number * _BYTES[unit.lower()] / 1e6


def parse_fraction(value: object, name: str = "max_accuracy_drop") -> float:
    """'1%' or '0.01' -> 0.01: points of the pipeline metric, as a fraction between 0 and 1."""
    forms = "'1%', '0.5%' or '0.01'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
        if number < 0:
            raise ConfigError(f"{option(name)} must not be negative. Got {value!r}; use a form such as {forms}.")
    else:
        number, unit = _split(value, name, forms)
    if unit == "%":
        number /= 100.0
    elif unit:
        raise ConfigError(f"{option(name)} has unknown unit {unit!r} in {str(value)!r}; use a form such as {forms}.")
    if not 0.0 <= number <= 1.0:
        raise ConfigError(
            f"{option(name)} must be between 0 and 1 (or 0% and 100%). Got {str(value)!r}; use a form such as {forms}."
        )
    return number
