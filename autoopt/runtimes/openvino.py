"""openvino: the candidate converted to OpenVINO IR (dynamic batch axis) and compiled for the CPU.

OpenVINO realizes three knobs itself: `precision` is its inference-precision hint (fp32 forces f32,
since OpenVINO's own default on a CPU with bf16 units is bf16; bf16 asks for bf16 and is a conflict on
a CPU without them), `threads` its INFERENCE_NUM_THREADS, and `quantization` goes through NNCF on the IR
(static_int8: `nncf.quantize` calibrated on the pipeline's calibration data, with the transformer
preset where the graph has attention (a fused ScaledDotProductAttention, as convert_model makes of a
transformers model, or MatMul + Softmax), int8_layers' float layers in its ignored scope;
weight_only_int8: `nncf.compress_weights`). With precision=bf16, what int8 leaves runs in bf16. The IR does not
depend on batch size, threads or the precision hint, so it is cached by the model's fingerprint and
the quantization. Compiled with a latency hint (one stream), the way a server answering one request
at a time runs it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

from ..cache import ArtifactCache, model_fingerprint
from ..errors import Unsupported
from .base import (BuildContext, Built, ExportFormat, Prepared, dynamic_axes, flattened, has_attention, in_layers,
                   to_reference_dtypes)

REALIZES = frozenset({"quantization", "quant_granularity", "precision"})
PROGRAMS = frozenset({"exported", "scripted"})  # the saved programs it builds from (autoopt.study.programs)
HINTS = {"fp32": "f32", "bf16": "bf16"}  # the precision knob -> OpenVINO's INFERENCE_PRECISION_HINT
MODULE = re.compile(r"__module\.inner\.([^/]+)/")  # the module path in a converted op's name (Flat's `inner`)


def _core():
    """The process's one OpenVINO Core, never destroyed. OpenVINO's CPU plugin gives the thread that
    creates it a signal stack of its own (mapped per Core, unmapped when the Core dies) and puts back the
    one it replaced: two Cores that die in the order they were made leave the process on an unmapped
    signal stack, and its next signal (Ctrl-C) is a segmentation fault (seen with OpenVINO 2026.4 on an
    AMX CPU, where it took a test session down). plain_loader keeps the same Core, so that a bundle
    loaded beside autoopt (an MLflow pyfunc) shares it."""
    import openvino

    core = getattr(openvino, "_shared_core", None)
    if core is None:
        core = openvino._shared_core = openvino.Core()
    return core


@functools.cache  # asked for every sampled configuration; an OpenVINO Core costs about 25 ms
def cpu_supports_bf16() -> bool:
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def unavailable(value: str, device: str) -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed (pip install openvino nncf)"
    if device != "cpu":
        return "the openvino runtime compiles for the CPU (its GPU plugin serves Intel GPUs, not CUDA)"
    return None


def conflict(config: dict, device: str) -> str | None:
    precision, quant = config.get("precision", "fp32"), config.get("quantization", "none")
    if precision not in HINTS:
        return f"openvino runs fp32 or bf16 on a CPU; precision={precision} is not one of them"
    if precision == "bf16" and not cpu_supports_bf16():
        return "precision=bf16 on openvino needs a CPU with bf16 units (AVX512-BF16 or AMX-BF16); this one has none"
    if quant == "dynamic_int8":
        return "dynamic_int8 is not an OpenVINO mode: use static_int8 (NNCF, calibrated) or weight_only_int8"
    if quant != "none" and config.get("quant_granularity") == "per_tensor":
        return "NNCF quantizes OpenVINO weights per channel, not per tensor"
    return None


def _convert(model, example: tuple):
    """The model as OpenVINO IR with named inputs and a dynamic batch axis (and sequence axis, where a
    trimming model cuts it); (input names, output spec)."""
    import openvino
    import torch
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    flat, names, spec = flattened(model, example)
    with torch.no_grad(), _fused_names_kept():
        if hasattr(model, "sequence_inputs"):
            # convert_model's trace checks that tracing twice gives the same graph, which a data-dependent slice
            # bound (a trimming model's kept length) fails although both traces compute the same thing
            flat = TorchScriptPythonDecoder(flat, example_input=example, trace_kwargs={"check_trace": False})
            converted = openvino.convert_model(flat)
        else:
            converted = openvino.convert_model(flat, example_input=example)
    for port, name, tensor, axes in zip(converted.inputs, names, example, dynamic_axes(model, len(example))):
        port.get_tensor().set_names({name})
        converted.reshape({port: openvino.PartialShape([-1 if i in axes else n for i, n in enumerate(tensor.shape)])})
    return converted, names, spec


@contextlib.contextmanager
def _fused_names_kept():
    """convert_model folds a BatchNorm into the Convolution before it and names the result after the fold
    (`Multiply_3148`), then clears the record of the names it fused. Kept, that record still names the
    convolution's module (`__module.inner.features.0/aten::_convolution/...`): how int8_layers finds a
    layer in the IR. Nothing else changes in the IR."""
    from openvino.tools.ovc.moc_frontend import offline_transformations

    cleanup = offline_transformations.apply_fused_names_cleanup
    offline_transformations.apply_fused_names_cleanup = lambda model: None
    try:
        yield
    finally:
        offline_transformations.apply_fused_names_cleanup = cleanup


def module_paths(op) -> set[str]:
    """The torch module paths an IR op came from: its own name's and those of the ops fused into it."""
    names = [op.get_friendly_name()]
    info = op.get_rt_info()
    if "fused_names_0" in info:
        names += str(info["fused_names_0"].astype(str)).split(",")
    return {m.group(1) for name in names for m in [MODULE.search(name)] if m}


def layer_ops(converted, layers) -> list[str]:
    """The names of the IR ops that belong to `layers` (module paths): NNCF's ignored scope for them."""
    return [op.get_friendly_name() for op in converted.get_ops()
            if op.get_type_name() not in ("Constant", "Parameter", "Result")
            and any(in_layers(path, layers) for path in module_paths(op))]


def _quantize(converted, config: dict, names: list[str], ctx: BuildContext, layers: tuple[str, ...]):
    import nncf

    mode = config["quantization"]
    if mode == "weight_only_int8":
        return nncf.compress_weights(converted)
    transformer = has_attention(op.get_type_name() for op in converted.get_ops())
    batches = ctx.calibration()
    dataset = nncf.Dataset(batches, lambda batch: {n: t.numpy() for n, t in zip(names, batch)})
    ignored = nncf.IgnoredScope(names=layer_ops(converted, layers), validate=False)  # int8_layers' float layers
    try:  # subset_size counts dataset items (batches here): calibrate on all of them
        return nncf.quantize(converted, dataset, model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                             subset_size=len(batches), ignored_scope=ignored)
    except Exception as exc:  # noqa: BLE001 - NNCF errors differ by graph; the trial is pruned with the reason
        raise Unsupported(f"static_int8 on openvino (NNCF) cannot quantize this model: {type(exc).__name__}: {exc}"[:300],
                          {"compile_mode": "openvino", "quantization": mode}) from exc


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import openvino
    import torch
    from torch.utils import _pytree as pytree

    model = model.cpu()
    example = tuple(t.cpu() for t in ctx.example_inputs)
    quant = config.get("quantization", "none")
    layers = ctx.float_layers(model, config)
    key = model_fingerprint(model, example, quantization=quant, float_layers=layers, torch=torch.__version__,
                            openvino=openvino.__version__)

    def build() -> tuple[str, dict]:
        converted, names, spec = _convert(model, example)
        path = os.path.join(ctx.workdir, "model.xml")
        if quant != "none":
            converted = _quantize(converted, config, names, ctx, layers)
        openvino.save_model(converted, path, compress_to_fp16=False)
        return path, {"input_names": names, "output_spec": pytree.treespec_dumps(spec)}

    artifact, meta = ArtifactCache("openvino").get_or_build(key, "model.xml", build, ctx.workdir, ("model.bin",))
    size = sum(os.path.getsize(os.path.join(os.path.dirname(artifact), f)) for f in ("model.xml", "model.bin"))
    return Prepared(size / 1e6, artifact=artifact, state={
        "input_names": meta["input_names"], "output_spec": pytree.treespec_loads(meta["output_spec"]), "cache_key": key,
    })


def properties(threads: int, precision: str) -> dict:
    return {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": HINTS[precision]}


def predictor(compiled, spec):
    """predict(*tensors) over a compiled model: positional inputs, the output structure restored."""
    import torch
    from torch.utils import _pytree as pytree

    request = compiled.create_infer_request()

    def predict(*inputs):
        results = request.infer([t.detach().cpu().numpy() for t in inputs])
        flat = [torch.from_numpy(results[port].copy()) for port in compiled.outputs]
        return to_reference_dtypes(pytree.tree_unflatten(flat, spec))

    return predict


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    compiled = _core().compile_model(prepared.artifact, "CPU",
                                     properties(ctx.threads, config.get("precision", "fp32")))
    return Built(predictor(compiled, prepared.state["output_spec"]))


def plain_loader(bundle: str, manifest: dict):
    """Stock openvino with the threads and precision the trial was measured with (see ExportFormat)."""
    import openvino

    # One Core per process, kept for its life: a second Core destroyed out of order crashes the process at
    # its next signal (an OpenVINO bug; see autoopt.runtimes.openvino._core).
    core = getattr(openvino, "_shared_core", None)
    if core is None:
        core = openvino._shared_core = openvino.Core()
    settings = manifest["runtime"]
    compiled = core.compile_model(bundle + "/" + manifest["model_file"], "CPU", {
        "INFERENCE_NUM_THREADS": settings["threads"], "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": settings["inference_precision"]})
    request = compiled.create_infer_request()
    paths = manifest["outputs"]["paths"]

    def run(arrays):
        results = request.infer(list(arrays))
        return {path: results[port].copy() for path, port in zip(paths, compiled.outputs)}

    return run


def _load_bundle(bundle, manifest, spec):
    settings = manifest.runtime
    precision = {hint: knob for knob, hint in HINTS.items()}[settings["inference_precision"]]
    compiled = _core().compile_model(str(bundle / manifest.model_file), "CPU",
                                     properties(settings["threads"], precision))
    return predictor(compiled, spec)


EXPORT = ExportFormat(
    name="openvino", model_file="model.xml", plain_loader=plain_loader, load=_load_bundle, packages=("openvino",),
    settings=lambda config, prepared: {"inference_precision": HINTS[config.get("precision", "fp32")]},
    companions=("model.bin",), tools=("nncf",),
)
