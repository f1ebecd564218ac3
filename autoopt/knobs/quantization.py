"""quantization: none, dynamic_int8, static_int8, weight_only_int8.

Realized where it runs best: the onnxruntime runtime quantizes its ONNX file itself (ORT's dynamic
and static QDQ quantizers, MatMulNBits for weight-only); on the torch runtimes this module
transforms the nn.Module:
- eager / torchscript: torch.ao dynamic int8 (Linear, LSTM, GRU) and FX static int8 (x86 engine);
  both survive TorchScript tracing and freezing.
- inductor: PT2E static or dynamic int8 with the X86 inductor quantizer, compiled with freezing.
- weight_only_int8: torchao's Int8WeightOnlyConfig (eager, inductor). Measured on this CPU: it saves
  memory but is slower than fp32; the search decides.
Static int8 calibrates on the pipeline's calibration_data (or make_inputs batches when absent).
"""

from __future__ import annotations

import copy

import torch

from .. import runtimes
from ..errors import Unsupported
from .base import Knob

MODES = ("none", "dynamic_int8", "static_int8", "weight_only_int8")
TORCH_ENGINES = ("x86", "fbgemm")


def supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def _conflict(config: dict, device: str) -> str | None:
    mode = config.get("quantization", "none")
    if mode == "none":
        return None
    runtime = config.get("compile_mode", "eager")
    realizes = runtimes.get(runtime).REALIZES
    if {"quantization", "precision"} <= realizes:
        return None  # int8 with the rest in bf16 (openvino): the runtime's conflict() says what it cannot do
    if config.get("precision", "fp32") != "fp32":
        # One reason for every int8 mode: the sampler then never proposes another int8 + half pairing.
        return f"int8 quantization starts from the fp32 model; it does not combine with precision={config['precision']}"
    if "quantization" in realizes:
        return None  # the runtime quantizes its own graph; its conflict() says what it cannot do
    if device == "cuda":
        return f"quantization={mode} on the torch runtimes uses CPU int8 kernels; on CUDA use compile_mode=onnxruntime"
    if mode == "weight_only_int8" and runtime == "torchscript":
        return "weight_only_int8 (torchao tensor subclasses) cannot be traced by TorchScript"
    if mode != "weight_only_int8":
        engines = supported_engines()
        if not set(TORCH_ENGINES) & set(engines):
            return (f"quantization={mode} with compile_mode={runtime} needs a torch quantized engine "
                    f"(x86 or fbgemm); this build has {engines} (NoQEngine)")
        if runtime.startswith("inductor") and config.get("quant_granularity") == "per_tensor":
            return "the X86 inductor quantizer (PT2E) quantizes weights per channel only"
    return None


def _apply(model, config: dict, ctx):
    mode = config["quantization"]
    if mode == "none":
        return model
    runtime = config.get("compile_mode", "eager")
    per_channel = config.get("quant_granularity", "per_channel") == "per_channel"
    if mode == "weight_only_int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
        return model
    scope = {"quantization": mode, "compile_mode": runtime}  # what a failure here rules out
    if runtime.startswith("inductor"):
        return _pt2e(model, mode, ctx, scope)
    if mode == "dynamic_int8":
        quantized = _torch_dynamic(model, per_channel, scope)
    else:
        quantized = _fx_static(model, config, per_channel, ctx, scope)
    transformer_layers = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    if any(isinstance(m, transformer_layers) for m in model.modules()):
        return RegularTransformerPath(quantized)
    return quantized


class RegularTransformerPath(torch.nn.Module):
    """Runs a quantized model with PyTorch's fused transformer fast path off: the fast path's
    eligibility checks read `.weight.device`, which quantized Linear layers no longer have."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs):
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.inner(*inputs)
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)


def _torch_dynamic(model, per_channel: bool, scope: dict):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    targets = (torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU)
    if not any(isinstance(m, targets) for m in model.modules()):
        raise Unsupported("dynamic_int8 quantizes Linear/LSTM/GRU layers and this model has none", scope)
    torch.backends.quantized.engine = "x86"
    return quantize_dynamic(model, {t: qconfig for t in targets}, dtype=torch.qint8)


def _fx_static(model, config: dict, per_channel: bool, ctx, scope: dict):
    from torch.ao.quantization import QConfigMapping, default_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86") if per_channel else QConfigMapping().set_global(default_qconfig)
    for name in ctx.float_layers(model, config):  # int8_layers: a module and everything inside it
        mapping.set_module_name(name, None)
    batches = ctx.calibration()  # outside the try: a bug in the pipeline's data is the user's error
    try:
        prepared = prepare_fx(copy.deepcopy(model), mapping, ctx.example_inputs)
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        return convert_fx(prepared)
    except Exception as exc:  # symbolic tracing meets control flow, observers meet integer inputs, ...
        raise Unsupported(f"static_int8 (FX) cannot quantize this model: {type(exc).__name__}: {exc}"[:300], scope) from exc


def _pt2e(model, mode: str, ctx, scope: dict):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(is_dynamic=mode == "dynamic_int8")
    )
    batches = ctx.calibration() if mode == "static_int8" else [ctx.example_inputs]  # outside the try, as above
    try:
        batch = torch.export.Dim("batch")  # calibration and serving batches differ from the example's
        exported = torch.export.export(model, ctx.example_inputs, dynamic_shapes=tuple({0: batch} for _ in ctx.example_inputs))
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        converted = convert_pt2e(prepared)
    except Exception as exc:
        raise Unsupported(f"{mode} for inductor (PT2E) cannot quantize this model: {type(exc).__name__}: {exc}"[:300],
                          scope) from exc
    allow_exported_model_train_eval(converted)  # the runtimes call .eval() on what they are given
    return converted


KNOB = Knob(
    name="quantization",
    doc="int8 quantization: dynamic, static (calibrated), weight-only; realized per runtime.",
    baseline="none",
    choices=MODES,
    conflict=_conflict,
    apply=_apply,
    tolerance=(0.95, float("inf")),  # by design: the metric check of the export bounds it
    # Measured on CPU (README, "What the knobs do on a CPU"): FX static int8 + TorchScript for conv
    # nets, ORT dynamic int8 for transformers; with VNNI, OpenVINO + NNCF static int8 was the fastest
    # transformer path at batch 1 and 32 (2.6x and 2.8x the eager reference).
    warm_start=(("infer", "cpu", {"quantization": "static_int8", "compile_mode": "openvino"}, ("AMX-INT8", "AVX512-VNNI")),
                ("infer", "cpu", {"quantization": "static_int8", "compile_mode": "torchscript"}),
                ("infer", "cpu", {"quantization": "dynamic_int8", "compile_mode": "onnxruntime"})),
    programs=(),  # swaps nn.Linear / traces with FX; onnxruntime and openvino quantize a program's graph themselves
)
