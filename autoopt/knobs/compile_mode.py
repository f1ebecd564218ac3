"""compile_mode: the runtime that executes the candidate, is measured, and is later shipped.

Each value is a module in autoopt.runtimes; this knob only asks that runtime what it can carry.
"""

from __future__ import annotations

from .. import runtimes
from .base import Knob


def _unavailable(value: str, device: str) -> str | None:
    return runtimes.get(value).unavailable(value, device)


def _conflict(config: dict, device: str) -> str | None:
    return runtimes.get(config["compile_mode"]).conflict(config, device)


KNOB = Knob(
    name="compile_mode",
    doc="Runtime that builds predict and is shipped: eager, torchscript, inductor (default, max-autotune, "
        "reduce-overhead on CUDA), inductor_aot (AOTInductor package), onnxruntime or openvino.",
    baseline="eager",
    choices=runtimes.MODES,  # the registry's, read when used
    unavailable=_unavailable,
    conflict=_conflict,
    tasks=("infer", "train"),
    train_choices=("eager", "inductor"),
    warm_start=(("infer", "cpu", {"compile_mode": "onnxruntime"}),),
)
