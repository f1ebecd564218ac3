"""trim_padding: cut padded inputs to the batch's longest real row, inside the model (inference only).

- off: the model runs the shape it is given (the baseline).
- on: the inputs a padding mask pads are cut to the batch's longest real row before the model runs.
- bucketed: the kept length rounded up to a multiple of padding.BUCKET (fewer distinct shapes, for runtimes
  that compile or cache kernels per shape).

Only for a pipeline with a padding mask (declared with Pipeline(padding_mask=...) or detected: see
autoopt.padding); dropped from the space otherwise. The cut is a module around the model, so every graph
runtime captures it: the exported ONNX / OpenVINO / TorchScript / AOTInductor file computes the kept length
from the mask itself, with a dynamic sequence axis. torch.compile (the inductor modes) would compile once per
kept length, and AOTInductor fails to lower attention over the data-dependent length: conflicts there. The timed batches are the
pipeline's make_inputs, padded as the user's batches are: the trial reports the share of padding in them.
"""

from __future__ import annotations

from .. import padding
from ..errors import Unsupported
from .base import Knob

CHOICES = ("off", "on", "bucketed")
# the runtimes that cannot run a trimming model, and why
CONFLICTS = {
    **dict.fromkeys(("inductor", "inductor_max_autotune", "inductor_reduce_overhead"),
                    "torch.compile would compile once per kept length"),
    # torch.export captures the cut, but AOTInductor (torch 2.13) fails to lower attention over the data-dependent
    # length: "Could not guard on data-dependent expression"
    "inductor_aot": "AOTInductor cannot compile attention over a data-dependent length here",
}


def _requires(pipeline) -> str | None:
    found = padding.find(pipeline) if pipeline is not None else None
    if found is None:
        return ("the pipeline has no padding mask (a 0/1 input whose zeros end each row): declare one with "
                "Pipeline(padding_mask='attention_mask')")
    return found.refused


def _conflict(config: dict, device: str) -> str | None:
    mode = config.get("compile_mode")
    if config.get("trim_padding", "off") != "off" and mode in CONFLICTS:
        return (f"trim_padding on {mode}: {CONFLICTS[mode]}; onnxruntime, openvino and torchscript capture the cut "
                f"with a dynamic sequence axis")
    return None


def _apply(model, config: dict, ctx):
    value = config.get("trim_padding", "off")
    found = padding.find(ctx.pipeline) if ctx.pipeline is not None else None
    if found is not None and ctx.batch_inputs:  # what the timing sees: the user's batches, padded as they are
        timed = padding.trim(ctx.batch_inputs, found, padding.multiple(value)) if value != "off" else ctx.batch_inputs
        ctx.report["padding_share"] = padding.share(ctx.batch_inputs, found)
        ctx.report["timed_length"] = timed[found.mask].shape[1]  # the positions the model runs per row
    if value == "off":
        return model
    if reason := _requires(ctx.pipeline):
        raise Unsupported(f"trim_padding: {reason}", {"trim_padding": value})
    return padding.trimming(model, found, padding.multiple(value))


def _parse(value):
    """YAML reads a bare off/on as false/true."""
    return {False: "off", True: "on"}[value] if isinstance(value, bool) else value


KNOB = Knob(
    name="trim_padding",
    doc="Cut padded inputs to the batch's longest real row inside the model: off, on, bucketed (to a multiple of 8).",
    baseline="off",
    choices=CHOICES,
    conflict=_conflict,
    requires=_requires,
    apply=_apply,
    parse=_parse,
    warm_value="on",  # the warm-start configurations run trimmed where the pipeline has a padding mask
    programs=(),  # wraps the model's forward around its named mask input; a program pipeline declares no mask
)
