"""onnxruntime: ONNX export of the candidate (dynamic batch axis), then an ORT inference session.

The runtime realizes three knobs itself, on the ONNX graph: graph_fusion (ORT's transformer
optimizer, then the session's optimization level), quantization with quant_granularity (ORT's
dynamic and static QDQ quantizers; MatMulNBits 8-bit for weight-only) and threads (an explicit
intra-op thread count: ORT's default, all cores with spinning, is erratic on a small shared machine).
The built file does not depend on batch size or threads, so it is cached by the model's fingerprint
and the knobs that shape it. Outputs are flattened for export and restored after each run, so dict
and nested tuple outputs come back with the eager model's structure.
"""

from __future__ import annotations

import functools
import os
import warnings

from ..cache import ArtifactCache, model_fingerprint
from ..errors import Unsupported
from .base import BuildContext, Built, ExportFormat, Prepared, export_shapes, flattened, in_layers, to_reference_dtypes

REALIZES = frozenset({"quantization", "quant_granularity", "graph_fusion"})
PROGRAMS = frozenset({"exported"})  # its exporter (dynamo: torch.export) cannot capture TorchScript (autoopt.study.programs)
TRANSFORMER_FUSIONS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
                       "Gelu", "BiasGelu", "FastGelu", "EmbedLayerNormalization")


def _providers(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def unavailable(value: str, device: str) -> str | None:
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    return None


def conflict(config: dict, device: str) -> str | None:
    if config.get("precision", "fp32") != "fp32":
        return f"onnxruntime runs the fp32 export here; precision={config['precision']} is a torch-runtime option"
    if config.get("quantization") == "weight_only_int8" and config.get("quant_granularity") == "per_tensor":
        return "ORT weight-only int8 (MatMulNBits) quantizes per block of 32 input channels, not per tensor"
    return None


def export_onnx(model, example_inputs: tuple, path: str):
    """Export with a shared dynamic batch axis (and sequence axis, where a trimming model cuts it); returns
    (input names, output spec)."""
    import torch

    flat, names, spec = flattened(model, example_inputs)
    with warnings.catch_warnings():
        # One shared batch Dim across inputs is what we want; the exporter warns that it merges them.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        torch.onnx.export(
            flat, example_inputs, path,
            dynamo=True, external_data=False, verbose=False,
            input_names=names, output_names=[f"output_{i}" for i in range(spec.num_leaves)],
            dynamic_shapes=export_shapes(model, len(example_inputs), varargs=True),
        )
    return names, spec


def _fuse_transformer(src: str, dst: str) -> None:
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(src, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    if not any(op in fused for op in TRANSFORMER_FUSIONS):
        raise Unsupported("graph_fusion=transformer: no attention, LayerNorm or GELU pattern in this graph to fuse",
                          {"compile_mode": "onnxruntime", "graph_fusion": "transformer"})
    optimized.save_model_to_file(dst)


def folded_producers(model, example: tuple) -> dict[str, str]:
    """{BatchNorm path: the Conv path whose output it normalizes}: the exporter folds each such BatchNorm
    into its Conv and names the result after the BatchNorm's module."""
    import torch

    produced, feeds, alive = {}, {}, []  # tensors kept alive: ids of freed ones are reused

    def conv_hook(module, inputs, out, path):
        alive.append(out)
        produced[id(out)] = path

    def norm_hook(module, inputs, out, path):
        alive.append(inputs[0])
        feeds[path] = id(inputs[0])

    hooks = []
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            hooks.append(module.register_forward_hook(functools.partial(conv_hook, path=path)))
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_hook(functools.partial(norm_hook, path=path)))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    return {bn: produced[source] for bn, source in feeds.items() if source in produced}


def layer_nodes(graph, layers, folded: dict[str, str]) -> list[str]:
    """The names of the ONNX nodes that belong to `layers` (module paths), read from the dynamo exporter's
    `namespace` metadata (`inner.rnn: torch.nn.modules.rnn.LSTM/...`; `inner` is `flattened`'s wrapper)."""
    nodes = []
    for node in graph.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        # ": Flat/inner: Model/inner.rnn: LSTM/lstm: aten.lstm.input": the wrapper, the modules, then the op
        parts = [part.split(": ")[0] for part in namespace.split("/")[1:-1]]
        paths = [p.removeprefix("inner.") for p in parts if p.startswith("inner.")]
        if node.op_type == "Conv" and paths and paths[-1] in folded:
            paths.append(folded[paths[-1]])
        if any(in_layers(path, layers) for path in paths):
            nodes.append(node.name)
    # ORT's QDQ quantizer drops a Relu/Clip before a quantized tensor and lets the quantization range clip
    # instead; before a float layer that range keeps the negatives, and the float layer sees them. Measured on a
    # ReLU MLP: its middle layer excluded alone, the error stayed that of whole int8.
    inputs = {name for node in graph.graph.node if node.name in nodes for name in node.input}
    nodes += [n.name for n in graph.graph.node if n.op_type in ("Relu", "Clip") and set(n.output) & inputs]
    return nodes


def _quantize(src: str, dst: str, config: dict, names: list[str], ctx: BuildContext, layers: tuple[str, ...] = (),
              folded: dict[str, str] | None = None) -> None:
    """`layers`: int8_layers' float layers (static int8), found in the graph through the exporter's metadata and
    `folded` (folded_producers)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    mode, per_channel = config["quantization"], config.get("quant_granularity", "per_channel") == "per_channel"
    # The exporter records shapes of initializers in value_info; the quantizer transposes Gemm weights
    # and its shape inference then fails on those stale entries. Initializers carry their own shapes.
    graph = onnx.load(src)
    excluded = layer_nodes(graph, layers, folded or {}) if layers else []
    initializers = {i.name for i in graph.graph.initializer}
    kept = [v for v in graph.graph.value_info if v.name not in initializers]
    del graph.graph.value_info[:]
    graph.graph.value_info.extend(kept)
    onnx.save(graph, src := dst + ".src.onnx")
    pre = dst + ".pre.onnx"
    try:
        quant_pre_process(src, pre, skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimization; quantize the graph as it is
        pre = src
    if mode == "dynamic_int8":
        quantize_dynamic(pre, dst, per_channel=per_channel, weight_type=QuantType.QInt8)
    elif mode == "static_int8":
        class Reader(CalibrationDataReader):
            def __init__(self, batches):
                self.feeds = iter([{n: t.numpy() for n, t in zip(names, b)} for b in batches])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(pre, dst, Reader(ctx.calibration()), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        nodes_to_exclude=list(excluded))
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        graph = onnx.load(pre)
        if not any(node.op_type == "MatMul" for node in graph.graph.node):
            raise Unsupported("weight_only_int8 on onnxruntime quantizes MatMul weights and this graph has none",
                              {"compile_mode": "onnxruntime", "quantization": "weight_only_int8"})
        quantizer = MatMulNBitsQuantizer(graph, bits=8, block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(dst)


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import onnxruntime
    import torch
    from torch.utils import _pytree as pytree

    model = model.cpu()
    example = tuple(t.cpu() for t in ctx.example_inputs)
    fusion, quant = config.get("graph_fusion", "basic"), config.get("quantization", "none")
    layers = ctx.float_layers(model, config)
    key = model_fingerprint(model, example, graph_fusion=fusion, quantization=quant, float_layers=layers,
                            quant_granularity=config.get("quant_granularity") if quant != "none" else None,
                            torch=torch.__version__, onnxruntime=onnxruntime.__version__)

    def build() -> tuple[str, dict]:
        path = os.path.join(ctx.workdir, "model.onnx")
        names, spec = export_onnx(model, example, path)
        if fusion == "transformer":
            _fuse_transformer(path, fused := os.path.join(ctx.workdir, "fused.onnx"))
            path = fused
        if quant != "none":
            folded = folded_producers(model, example) if layers else None
            _quantize(path, quantized := os.path.join(ctx.workdir, "quantized.onnx"), config, names, ctx, layers, folded)
            path = quantized
        return path, {"input_names": names, "output_spec": pytree.treespec_dumps(spec)}

    artifact, meta = ArtifactCache("onnx").get_or_build(key, "model.onnx", build, ctx.workdir)
    return Prepared(os.path.getsize(artifact) / 1e6, artifact=artifact, state={
        "input_names": meta["input_names"], "output_spec": pytree.treespec_loads(meta["output_spec"]),
        "cache_key": key,
    })


def session(path: str, threads: int, device: str = "cpu", graph_fusion: str = "basic"):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning worker threads keep cores busy after each run and slow whatever runs next on a
    # small machine (the other runtimes in a benchmark, the rest of a server); measured neutral to
    # slightly faster here without it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC if graph_fusion == "none"
        else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    sess = onnxruntime.InferenceSession(path, options, providers=_providers(device))
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        # ORT falls back to the CPU silently: a CPU figure must not be labelled CUDA
        raise Unsupported("onnxruntime on cuda: the CUDA execution provider is not active (the onnxruntime package has "
                          "no CUDA build here: pip install onnxruntime-gpu)", {"compile_mode": "onnxruntime"})
    return sess


def predictor(sess, names: list[str], spec, device: str = "cpu"):
    """predict(*tensors) over an ORT session: feeds by input name, restores the output structure.
    On CUDA the inputs are bound where they are (see `bound_predictor`)."""
    import torch
    from torch.utils import _pytree as pytree

    if device == "cuda":
        return bound_predictor(sess, names, spec, "cuda")

    def predict(*inputs):
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
        flat = [torch.from_numpy(a) for a in sess.run(None, feed)]
        return to_reference_dtypes(pytree.tree_unflatten(flat, spec))

    return predict


def bound_predictor(sess, names: list[str], spec, device_type: str):
    """predict(*tensors) with ORT IO binding: each input is bound by pointer on `device_type`, so
    inputs already on the GPU are not copied to the host and back inside the timing (the torch
    runtimes get theirs on the device too); outputs come back on the host, as theirs do."""
    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    outputs = [o.name for o in sess.get_outputs()]

    def predict(*inputs):
        binding = sess.io_binding()
        held = []  # the bound memory must outlive the run
        for name, t in zip(names, inputs):
            t = t.detach().to(device_type).contiguous()
            held.append(t)
            element = np.dtype(str(t.dtype).removeprefix("torch.")).type
            binding.bind_input(name, device_type, t.device.index or 0, element, tuple(t.shape), t.data_ptr())
        for name in outputs:
            binding.bind_output(name, "cpu")
        sess.run_with_iobinding(binding)
        flat = [torch.from_numpy(a) for a in binding.copy_outputs_to_cpu()]
        return to_reference_dtypes(pytree.tree_unflatten(flat, spec))

    return predict


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    sess = session(prepared.artifact, ctx.threads, ctx.device, config.get("graph_fusion", "basic"))
    predict = predictor(sess, prepared.state["input_names"], prepared.state["output_spec"], ctx.device)
    sync = None
    if ctx.device == "cuda":
        import torch

        sync = torch.cuda.synchronize
    return Built(predict, sync=sync)


def plain_loader(bundle: str, manifest: dict):
    """Stock onnxruntime with the session options the trial was measured with (see ExportFormat)."""
    import onnxruntime as ort

    settings = manifest["runtime"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings["threads"]
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if settings["graph_fusion"] == "none":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(bundle + "/" + manifest["model_file"], options, providers=["CPUExecutionProvider"])
    names, paths = [i["name"] for i in manifest["inputs"]], manifest["outputs"]["paths"]

    def run(arrays):
        return dict(zip(paths, session.run(None, dict(zip(names, arrays)))))

    return run


def _load_bundle(bundle, manifest, spec):
    settings = manifest.runtime
    sess = session(str(bundle / manifest.model_file), settings["threads"], "cpu", settings["graph_fusion"])
    return predictor(sess, [i["name"] for i in manifest.inputs], spec)


def _check(model_file: str) -> None:
    import onnx

    onnx.checker.check_model(model_file)


EXPORT = ExportFormat(
    name="onnx", model_file="model.onnx", plain_loader=plain_loader, load=_load_bundle, packages=("onnxruntime",),
    settings=lambda config, prepared: {"graph_fusion": config.get("graph_fusion", "basic")}, check=_check,
    tools=("onnx",),
)
