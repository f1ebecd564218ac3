"""threads: intra-op threads of PyTorch and ONNX Runtime on CPU. Realized by the worker and runtimes.

It changes latency as much as any knob on a small machine: one thread often wins at batch 1, all
cores at large batches. The baseline is every core this process may use.
"""

from __future__ import annotations

from ..machine import available_cores
from .base import Knob


def _unavailable(value: int, device: str) -> str | None:
    cores = available_cores()
    return f"this machine has {cores} cores for this process" if value > cores else None


KNOB = Knob(
    name="threads",
    doc="Intra-op threads on CPU (PyTorch set_num_threads, ORT intra_op_num_threads).",
    baseline=available_cores(),
    bounds=(1, 1024),
    integer=True,
    unavailable=_unavailable,
    tasks=("infer", "train"),
    changes_numerics=False,
)
