"""onnxruntime: ONNX export of the candidate (dynamic batch axis), then an ORT inference session.

The model's outputs are flattened for export and restored after each run, so dict and nested tuple
outputs come back with the eager model's structure. The session gets explicit intra-op threads:
ORT's default (all cores, spinning) is erratic on a small shared machine.
"""

from __future__ import annotations

import inspect
import os
import warnings

from .base import BuildContext, Built, Prepared, output_spec, to_reference_dtypes


def _providers(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def unavailable(device: str) -> str | None:
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    return None


def conflict(config: dict, device: str) -> str | None:
    if config.get("precision", "fp32") != "fp32":
        return f"onnxruntime runs the fp32 export here; precision={config['precision']} is a torch-runtime option"
    return None


def input_names(model, n_inputs: int) -> list[str]:
    """The forward() argument names (input_ids, attention_mask, ...) when they can be read."""
    try:
        params = [
            p.name for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:n_inputs] if len(params) >= n_inputs else [f"input_{i}" for i in range(n_inputs)]


def export_onnx(model, example_inputs: tuple, path: str):
    """Export with a shared dynamic batch axis; returns (input names, output spec)."""
    import torch
    from torch.utils import _pytree as pytree

    class Flat(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return tuple(pytree.tree_leaves(self.inner(*inputs)))

    with torch.inference_mode():
        spec = output_spec(model(*example_inputs))
    names = input_names(model, len(example_inputs))
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # One shared batch Dim across inputs is what we want; the exporter warns that it merges them.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        torch.onnx.export(
            Flat(model).eval(), example_inputs, path,
            dynamo=True, external_data=False, verbose=False,
            input_names=names, output_names=[f"output_{i}" for i in range(spec.num_leaves)],
            dynamic_shapes=(tuple({0: batch} for _ in example_inputs),),
        )
    return names, spec


def session(path: str, threads: int, device: str = "cpu"):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(path, options, providers=_providers(device))


def prepare(model, example_inputs: tuple, config: dict, ctx: BuildContext) -> Prepared:
    path = os.path.join(ctx.workdir, "model.onnx")
    names, spec = export_onnx(model.cpu().eval(), tuple(t.cpu() for t in example_inputs), path)
    return Prepared(os.path.getsize(path) / 1e6, artifact=path, state={"input_names": names, "output_spec": spec})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch
    from torch.utils import _pytree as pytree

    names, spec = prepared.state["input_names"], prepared.state["output_spec"]
    sess = session(prepared.artifact, ctx.threads, ctx.device)

    def predict(*inputs):
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
        flat = [torch.from_numpy(a) for a in sess.run(None, feed)]
        return to_reference_dtypes(pytree.tree_unflatten(flat, spec))

    return Built(predict)
