"""threads: intra-op threads of PyTorch and ONNX Runtime on CPU. Realized by the worker and runtimes.

It changes latency as much as any knob on a small machine: one thread often wins at batch 1, all
cores at large batches. The baseline is every core this process may use. A space file may say
`cores` or `cores/N` (the cores this process may use, divided by N, at least 1), so that one bundled
space offers [1, 2, 32] on a 32-core machine and [1, 2] on a 2-core one.
"""

from __future__ import annotations

import re

from ..machine import available_cores
from .base import Knob

_CORES = re.compile(r"cores(?:/([1-9][0-9]*))?")


def _unavailable(value: int, device: str) -> str | None:
    cores = available_cores()
    return f"this machine has {cores} cores for this process" if value > cores else None


def _parse(value):
    match = _CORES.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return value
    return max(1, available_cores() // int(match.group(1) or 1))


KNOB = Knob(
    name="threads",
    doc="Intra-op threads on CPU (PyTorch set_num_threads, ORT intra_op_num_threads).",
    baseline=available_cores(),
    bounds=(1, 1024),
    integer=True,
    unavailable=_unavailable,
    parse=_parse,
    spellings="'cores' or 'cores/N'",
    tasks=("infer", "train"),
    changes_numerics=False,
)
