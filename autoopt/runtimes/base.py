"""The runtime contract (`Runtime`), what it is given and returns, and helpers the runtimes share.

A runtime is a module of this package that satisfies `Runtime`, registered in `runtimes/__init__.py`
under the `compile_mode` values it serves. The conformance suite (tests/test_runtimes.py) runs every
registered runtime; export, `autoopt.load` and MLflow logging read an exportable runtime's `EXPORT`.
`predict(*inputs)` takes CPU tensors in the reference's dtypes and returns CPU fp32 outputs with the
eager model's structure (tensor, tuple, dict). Peak memory is measured over `load` plus the timed
calls, so export machinery is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class ExportFormat:
    """How an exportable runtime's artifact ships in a bundle (`autoopt export --format NAME`).

    plain_loader(bundle_dir: str, manifest: dict) -> run(arrays: list[numpy array]) -> {output path: array}:
        loads the model file with stock packages only. It must be self-contained (imports inside, no
        autoopt, no module-level names): the verifier runs its source in a fresh process where autoopt
        cannot be imported, which is the proof that a deployment needs nothing of autoopt.
    load(bundle_dir: Path, manifest: bundle.manifest.Manifest, spec) -> predict: `autoopt.load`, with the runtime
        settings the trial was measured with (manifest.runtime), outputs restored to the pytree `spec`.
    packages: the PyPI packages the plain loader needs (pinned in the logged MLflow model, which runs the
        plain loader: logged_model.log_exported_model).
    settings(config: dict, prepared: Prepared) -> dict: runtime settings the manifest records.
    check(model_file: str): a structural check of the file before it is run (raises), or None.
    companions: files that ship beside the model file, under these names (OpenVINO's model.bin).
    tools: packages that build the artifact (onnx, nncf): the manifest records their versions too.
    admits(model, config, ctx): for a trial this format carries, raises Unsupported (the trial pruned with the
        reason, before its own build) when the format cannot ship that model (aoti: torch.export must capture it).
    carries: other compile_mode values whose trials this format ships by building the trial's
        configuration on its own runtime (an inductor trial as an AOTInductor package, an eager one as
        TorchScript): what `autoopt export` without --format does for a winner of a runtime that writes
        no file. The bundle is verified and re-timed like any other; its manifest names the trial's runtime.
    """

    name: str
    model_file: str
    plain_loader: Callable[[str, dict], Callable]
    load: Callable[..., Callable]
    packages: tuple[str, ...]
    settings: Callable[[dict, "Prepared"], dict] = lambda config, prepared: {}
    check: Callable[[str], None] | None = None
    companions: tuple[str, ...] = ()
    carries: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()  # packages that build the artifact (their versions go in the manifest), not serve it
    admits: Callable[[Any, dict, "BuildContext"], None] | None = None


@runtime_checkable
class Runtime(Protocol):
    """What every runtime module provides (DEFAULTS: what it may leave out).

    REALIZES: the knobs it realizes itself (their model-level `apply` is skipped).
    PROGRAMS: the saved-program forms it builds from besides an nn.Module ("exported": a torch.export
        program's module, "scripted": TorchScript), as measured (tests/test_programs.py).
    EXPORT: its ExportFormat when its artifact can ship, else None.
    unavailable(value, device): why this compile_mode value cannot run on this machine, or None.
    conflict(config, device): why this combination cannot work with this runtime, or None.
    prepare(model, config, ctx) -> Prepared: the offline work (export, quantization, compilation)
        that produces what would be shipped, and its size; timed as `build_s`. `model` is in eval mode.
    load(prepared, config, ctx) -> Built: what a server does with it (load a file, create a session).
    train_forward(model, config) -> the forward the training step calls (--task train), or None where the runtime
        does not run a training step (module attribute None).
    """

    REALIZES: frozenset
    PROGRAMS: frozenset
    EXPORT: ExportFormat | None

    def unavailable(self, value: str, device: str) -> str | None: ...

    def conflict(self, config: dict, device: str) -> str | None: ...

    def prepare(self, model, config: dict, ctx: "BuildContext") -> "Prepared": ...

    def load(self, prepared: "Prepared", config: dict, ctx: "BuildContext") -> "Built": ...


def _never(*_args) -> None:
    return None


# What a runtime module may leave out (runtimes.get completes it): no knob of its own, no saved program, no file to
# ship, available everywhere, no conflict, no training step.
DEFAULTS = {"REALIZES": frozenset(), "PROGRAMS": frozenset(), "EXPORT": None, "unavailable": _never, "conflict": _never,
            "train_forward": None}


def complete(module):
    """The runtime module with the contract's defaults (DEFAULTS) for what it leaves out."""
    for name, value in DEFAULTS.items():
        if not hasattr(module, name):
            setattr(module, name, value)
    return module


@dataclass(frozen=True)
class BuildContext:
    device: str  # "cpu" or "cuda"
    threads: int  # intra-op threads (CPU)
    workdir: str  # where the runtime may write its artifact (e.g. model.onnx)
    example_inputs: tuple = ()  # a batch of 2 (tracing, export: batch 1 would specialize the axis)
    batch_inputs: tuple = ()  # the trial's batch (compilation for the measured shape)
    calibration: Callable[[], list] = list  # representative input batches (static quantization)
    make_inputs: Callable[[int], tuple] | None = None  # the pipeline's, for checks at other batch sizes
    pipeline: Any = None  # the Pipeline, for knobs that need more of it (distillation: its teacher and data)
    report: dict = field(default_factory=dict)  # build figures a knob reports (distill_s), logged with the trial
    notes: list = field(default_factory=list)  # what a knob wants the trial's reason to say
    # int8_layers: {"float_layers": [...]}, the layers (module paths) int8 leaves in float: given (an export ships
    # the trial's own) or decided by `choose_layers`
    int8: dict = field(default_factory=dict)
    accuracy_floor: float | None = None  # the lowest metric within --max-accuracy-drop (int8_layers=auto)
    # (model, config, ctx) -> the float layers: autoopt.trial.sensitivity.float_layers, which the build gives (it ranks
    # layers by building int8 variants through the knobs and runtimes: they ask the context, never import it)
    choose_layers: Callable[[Any, dict, "BuildContext"], tuple] | None = None

    def float_layers(self, model, config: dict) -> tuple[str, ...]:
        """The layers the int8 quantizer of `config` leaves in float (int8_layers), as `choose_layers` decides; without
        it, the layers given in `int8` (none: every layer int8), and int8_layers off 'all' is a clear error."""
        if self.choose_layers is not None:
            return tuple(self.choose_layers(model, config, self))
        if config.get("quantization") != "static_int8":
            return ()
        if config.get("int8_layers", "all") != "all" and "float_layers" not in self.int8:
            raise ValueError("int8_layers needs BuildContext(choose_layers=autoopt.trial.sensitivity.float_layers): build the "
                             "candidate with autoopt.trial.build.build_candidate")
        return tuple(self.int8.get("float_layers") or ())

    def check_batches(self) -> list[tuple]:
        """Inputs to check a graph capture on (a trace follows one path through data-dependent branches):
        the trial's batch, odd and even batch sizes (as the export verifier uses) and calibration batches."""
        batches = [self.batch_inputs] if self.batch_inputs else []
        if self.make_inputs is not None:
            batches += [self.make_inputs(b) for b in (1, 3, 5)]
        return batches + list(self.calibration())[:4]


@dataclass
class Prepared:
    model_size_mb: float | None  # size of the serialized artifact this runtime ships; None: unknown
    artifact: str | None = None  # path of that artifact, when the runtime wrote one
    state: dict[str, Any] = field(default_factory=dict)  # what `load` needs besides the file


@dataclass
class Built:
    predict: Callable[..., Any]
    sync: Callable[[], None] | None = None  # waits for queued device work (CUDA), for timing


def in_layers(path: str, layers) -> bool:
    """Whether the module at `path` is one of `layers` or inside one."""
    return any(path == layer or path.startswith(layer + ".") for layer in layers)


ATTENTION_OPS = ("ScaledDotProductAttention", "Attention", "MultiHeadAttention")  # fused by OpenVINO / ORT


def has_attention(op_types) -> bool:
    """Whether a converted graph (OpenVINO IR or ONNX op types) contains attention: a fused attention op, or
    the MatMul + Softmax it decomposes into. `openvino.convert_model` fuses a transformers model's attention
    into one ScaledDotProductAttention (no Softmax left); the dynamo ONNX exporter decomposes it."""
    ops = set(op_types)
    return bool(ops & set(ATTENTION_OPS)) or {"MatMul", "Softmax"} <= ops


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


def torch_built(module, dtype, device: str, spec=None) -> "Built":
    """Built over a torch callable (torch_predictor), synchronized on CUDA for timing."""
    import torch

    return Built(torch_predictor(module, dtype, device, spec), sync=torch.cuda.synchronize if device == "cuda" else None)


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


def input_names(model, n_inputs: int) -> list[str]:
    """The forward() argument names (input_ids, attention_mask, ...) when they can be read; a wrapper that
    takes *inputs (padding.trimming) says its model's."""
    import inspect

    if isinstance(getattr(model, "input_names", None), list):
        return model.input_names[:n_inputs]
    try:
        params = [
            p.name for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:n_inputs] if len(params) >= n_inputs else [f"input_{i}" for i in range(n_inputs)]


def dynamic_axes(model, n_inputs: int) -> list[dict[int, str]]:
    """Per input, its dynamic axes: the batch (axis 0) of every input, and the sequence (axis 1) of those a
    trimming model (padding.trimming) cuts: they may come padded to any length."""
    sequence = getattr(model, "sequence_inputs", ())
    return [{0: "batch", **({1: "sequence"} if i in sequence else {})} for i in range(n_inputs)]


def export_shapes(model, n_inputs: int, max_batch: int | None = None, varargs: bool = False, batch: bool = True):
    """torch.export's dynamic_shapes for `dynamic_axes` (without the batch axis unless `batch`): one Dim per
    axis name, shared by the inputs; for a forward(*inputs) (`varargs`: flattened's module, a trimming model)
    the tuple is its one argument."""
    import torch

    dims = {"batch": torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch"),
            "sequence": torch.export.Dim("sequence", min=2)}
    shapes = tuple({axis: dims[name] for axis, name in axes.items() if batch or axis != 0}
                   for axes in dynamic_axes(model, n_inputs))
    return (shapes,) if varargs else shapes


def flattened(model, example_inputs: tuple):
    """(a module returning the model's outputs as a flat tuple, the forward() input names, the output
    spec that restores the structure): graph formats (ONNX, OpenVINO IR) carry flat outputs only."""
    import torch
    from torch.utils import _pytree as pytree

    class Flat(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return tuple(pytree.tree_leaves(self.inner(*inputs)))  # graphs name the modules `inner.<path>`

    with torch.inference_mode():
        spec = output_spec(model(*example_inputs))
    return Flat(model).eval(), input_names(model, len(example_inputs)), spec
