"""precision: the dtype the model computes in. fp32 is the reference; bf16/fp16 cast the model.

Inputs are cast to the model's dtype by the runtime and outputs come back as fp32, so that callers
see the reference's dtypes. Whether bf16 pays on a CPU is measured, not assumed: 0.75-0.90x fp32 on one
Intel Xeon with AVX512-BF16 and no AMX, 1.5-2.6x on an AMD EPYC with the same flags, 1.8x on a Skylake
without any (README); it stays a searchable choice everywhere and is warm-started where it is fast.
fp16 on CPU is 10-190x slower than fp32 and is only offered on CUDA.
"""

from __future__ import annotations

from .base import Knob

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _unavailable(value: str, device: str) -> str | None:
    import torch

    if value == "fp16" and device == "cpu":
        return "fp16 needs a CUDA device (on CPU it is many times slower than fp32)"
    if value == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        return "bf16 is not supported by this CUDA device"
    return None


def torch_dtype(value: str):
    import torch

    return getattr(torch, DTYPES[value])


def _apply(model, config: dict, ctx):
    value = config["precision"]
    return model if value == "fp32" else model.to(torch_dtype(value))


KNOB = Knob(
    name="precision",
    doc="Compute dtype of the model: fp32 (reference), bf16, fp16 (CUDA only).",
    baseline="fp32",
    choices=tuple(DTYPES),
    unavailable=_unavailable,
    apply=_apply,
    tasks=("infer", "train"),
    tolerance=(0.999, 0.05),
    # bf16 pays where the CPU computes it fast: with AMX (issue 13: OpenVINO bf16 4.1x, inductor bf16 2.7x
    # the eager fp32 reference on a sentence encoder), or where bf16 matrix products measure faster than
    # fp32 here (machine.FAST_BF16: an AMD EPYC with AVX512-BF16, OpenVINO bf16 3.6-4.0x); with AVX512-BF16
    # alone on an Intel Xeon it lost to f32 (README), so there bf16 is left to the sampler.
    warm_start=(("infer", "cpu", {"precision": "bf16", "compile_mode": "openvino"}, ("AMX-BF16", "BF16-FAST")),
                ("infer", "cpu", {"precision": "bf16", "compile_mode": "inductor"}, ("AMX-BF16", "BF16-FAST")),
                ("infer", "cuda", {"precision": "fp16", "compile_mode": "inductor"}),
                ("infer", "cuda", {"precision": "bf16"}),
                ("train", "cpu", {"precision": "bf16"}),
                ("train", "cuda", {"precision": "bf16", "compile_mode": "inductor"}),
                ("train", "cuda", {"precision": "fp16"})),
)
