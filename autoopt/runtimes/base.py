"""What every runtime shares: the build context, the built candidate, and output-structure helpers.

A runtime module provides `unavailable(device)`, `conflict(config, device)`, a REALIZES set of the
knobs it realizes itself (model-level `apply` is skipped for those), and two steps:
- `prepare(model, config, ctx) -> Prepared` (the model in eval mode): the offline work (export, quantization, compilation)
  that produces what would be shipped, and its size; timed as `build_s`;
- `load(prepared, config, ctx) -> Built`: what a server does with it (load, create a session).
Peak memory is measured over `load` plus the timed calls, so export machinery is not counted.
`predict(*inputs)` takes CPU tensors in the reference's dtypes and returns CPU fp32 outputs with the
eager model's structure (tensor, tuple, dict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class BuildContext:
    device: str  # "cpu" or "cuda"
    threads: int  # intra-op threads (CPU)
    workdir: str  # where the runtime may write its artifact (e.g. model.onnx)
    example_inputs: tuple = ()  # a batch of 2 (tracing, export: batch 1 would specialize the axis)
    batch_inputs: tuple = ()  # the trial's batch (compilation for the measured shape)
    calibration: Callable[[], list] = list  # representative input batches (static quantization)


@dataclass
class Prepared:
    model_size_mb: float  # size of the serialized artifact this runtime ships
    artifact: str | None = None  # path of that artifact, when the runtime wrote one
    state: dict[str, Any] = field(default_factory=dict)  # what `load` needs besides the file


@dataclass
class Built:
    predict: Callable[..., Any]
    sync: Callable[[], None] | None = None  # waits for queued device work (CUDA), for timing


def output_spec(outputs):
    """The pytree structure of a model's outputs, to restore it after a flat runtime."""
    from torch.utils import _pytree as pytree

    return pytree.tree_flatten(outputs)[1]


def torch_predictor(module, dtype, device: str, spec=None, grad_mode=None):
    """predict(*inputs) over a torch callable: floating inputs cast to the model's dtype on its device,
    outputs fp32 on CPU; with `spec`, the reference's output structure restored (TorchScript returns
    lists where the model returned tuples)."""
    import torch
    from torch.utils import _pytree as pytree

    mode = grad_mode or torch.no_grad

    def predict(*inputs):
        with mode():
            out = module(*cast_inputs(inputs, dtype, device))
        if spec is not None:
            out = pytree.tree_unflatten(pytree.tree_leaves(out), spec)
        return to_reference_dtypes(out)

    return predict


def to_reference_dtypes(outputs):
    """fp32 on CPU for floating outputs, so a bf16/fp16 candidate looks like the reference."""
    import torch
    from torch.utils import _pytree as pytree

    def convert(t):
        if isinstance(t, torch.Tensor):
            t = t.to("cpu")
            return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
        return t

    return pytree.tree_map(convert, outputs)


def cast_inputs(inputs, dtype, device: str) -> tuple:
    """Floating inputs take the model's dtype; integer inputs (ids, masks) keep theirs."""
    return tuple(
        t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs
    )


def model_dtype(model):
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def state_dict_mb(model) -> float:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def outputs_close(a, b, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    import torch
    from torch.utils import _pytree as pytree

    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol) for x, y in zip(la, lb)
    )
