"""int8_layers: how much of an int8 model stays int8 (static_int8 only).

`all` quantizes every layer the quantizer takes (the baseline). A share (0.9, 0.75, 0.5) keeps that
share of the quantizable layers in int8, the most tolerant first, and returns the rest to float; `auto`
returns the most sensitive layers to float, fewest first, until the pipeline's metric is within
--max-accuracy-drop. Layers are ranked once per model and runtime family (autoopt.trial.sensitivity). Float
layers run at the trial's float precision: bf16 on openvino with precision=bf16, fp32 elsewhere.
Realized by each int8 path: NNCF's ignored scope (openvino), ORT's nodes_to_exclude (onnxruntime),
per-module qconfig None in torch FX (eager, torchscript). The shipped bundle is that mixed model; its
manifest lists the float layers. The knob transforms nothing itself: each int8 quantizer asks its build context
(ctx.float_layers: autoopt.trial.sensitivity.float_layers) which layers stay float, on the model it is given (after pruning
and distillation).
"""

from __future__ import annotations

from .base import Knob

CHOICES = ("all", 0.9, 0.75, 0.5, "auto")
REALIZED_BY = ("eager", "torchscript", "onnxruntime", "openvino")


def _relevant(config: dict) -> bool:
    return config.get("quantization", "none") == "static_int8"


def _conflict(config: dict, device: str) -> str | None:
    mode = config.get("compile_mode", "eager")
    if config.get("int8_layers", "all") != "all" and _relevant(config) and mode not in REALIZED_BY:
        return (f"int8_layers on {mode}: the layer-wise int8 choice is realized by torch FX (eager, torchscript), "
                f"onnxruntime and openvino; the PT2E quantizer of the inductor runtimes quantizes the whole model")
    return None


KNOB = Knob(
    name="int8_layers",
    doc="Share of quantizable layers kept in int8 (static_int8), the most tolerant first; auto: within the drop.",
    baseline="all",
    choices=CHOICES,
    conflict=_conflict,
    relevant=_relevant,
    relevant_in={"quantization": "static_int8"},
    tolerance=(0.95, float("inf")),  # an int8 model: the metric check of the export bounds it, as for quantization
    # int8 with the rest in bf16 where bf16 is fast (a CPU with bf16 units has int8 ones too): auto is whole-model
    # int8 where that is within the drop (no ranking is computed then), mixed where it is not. Not a copy of
    # quantization's OpenVINO int8 seed (the rest in f32), which an fp32 `auto` would measure again wherever whole
    # int8 holds.
    warm_start=(("infer", "cpu", {"quantization": "static_int8", "int8_layers": "auto", "precision": "bf16",
                                  "compile_mode": "openvino"}, ("AMX-BF16", "BF16-FAST")),),
)
