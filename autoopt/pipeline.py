"""The pipeline contract, and loading a pipeline from a file or by the name of a bundled one."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import PipelineError, option

DEFAULT_PIPELINE = "digits_cnn"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pipelines"


@dataclass
class Pipeline:
    """What autoopt needs to know about a model. A pipeline file defines `PIPELINE = Pipeline(...)`.

    build_model: () -> nn.Module, a fresh fp32 reference model on CPU in eval mode.
    make_inputs: (batch_size) -> tuple of tensors, one batch of positional inputs (dim 0 = batch).
    evaluate: (predict) -> float, optional task metric on held-out data, higher is better.
    calibration_data: () -> iterable of input tuples, optional representative inputs.
    build_reference: () -> nn.Module, optional reference for the accuracy check (default build_model);
        the teacher of distillation too.
    distill_data: () -> iterable of input tuples, optional: unlabeled representative inputs that a pruned
        model is distilled on (distill_steps; default: make_batch when it has labels, then
        calibration_data, then make_inputs batches).

    padding_mask: the name (forward's argument) or position of the input that masks padding (0/1, zeros at
        the end of each row), for the trim_padding knob; None: detected in make_inputs and calibration_data
        batches; False: none.
    padded_inputs: the inputs that mask pads (names or positions); None: every input with the mask's batch
        and sequence axes.
    model_form: "module" (an nn.Module), or the saved program build_model returns: "exported" (a torch.export
        program's module) or "scripted" (TorchScript); knobs and runtimes that cannot change a program are
        dropped from the space (autoopt.study.programs). `autoopt search FILE.pt2 / FILE.pt` writes it.

    For the training task (`autoopt search --task train`):
    make_batch: (batch_size) -> tuple, one training batch: the model's inputs (as make_inputs gives
        them), then the targets.
    loss_fn: (outputs, batch) -> scalar tensor.
    blocks: (model) -> list of nn.Module, optional: the repeated blocks that checkpointing wraps
        (default: the largest nn.ModuleList / nn.Sequential of same-typed blocks).
    make_optimizer: (params) -> torch.optim.Optimizer, optional (default AdamW, lr 1e-3).
    """

    name: str
    build_model: Callable[[], Any]
    make_inputs: Callable[[int], tuple]
    evaluate: Callable[[Callable], float] | None = None
    calibration_data: Callable[[], Iterable[tuple]] | None = None
    build_reference: Callable[[], Any] | None = None
    distill_data: Callable[[], Iterable[tuple]] | None = None
    make_batch: Callable[[int], tuple] | None = None
    loss_fn: Callable[[Any, tuple], Any] | None = None
    blocks: Callable[[Any], list] | None = None
    make_optimizer: Callable[[Any], Any] | None = None
    padding_mask: str | int | bool | None = None
    padded_inputs: tuple | list | None = None
    model_form: str = "module"
    source: str | None = field(default=None, compare=False)  # the file it was loaded from

    def __post_init__(self) -> None:
        where = self.source or "Pipeline(...)"
        if not isinstance(self.name, str) or not self.name.strip():
            raise PipelineError(f"{where}: Pipeline 'name' must be a non-empty string. Got {self.name!r}.")
        for attr in ("build_model", "make_inputs"):
            if not callable(getattr(self, attr)):
                raise PipelineError(f"{where}: Pipeline '{attr}' must be a function. Got {getattr(self, attr)!r}.")
        for attr in ("build_model", "build_reference"):  # a module is callable too: the usual slip
            value = getattr(self, attr)
            if not isinstance(value, type) and hasattr(value, "parameters"):  # a class is a builder
                raise PipelineError(f"{where}: Pipeline '{attr}' must be a function that returns the model, not the "
                                    f"model ({type(value).__name__}). Write {attr}=lambda: model, or pass the builder.")
        for attr in ("evaluate", "calibration_data", "build_reference", "distill_data", "make_batch", "loss_fn",
                     "blocks", "make_optimizer"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise PipelineError(f"{where}: Pipeline '{attr}' must be a function or None. Got {value!r}.")

        if self.padding_mask is True or not isinstance(self.padding_mask, (str, int, type(None))):
            raise PipelineError(f"{where}: Pipeline 'padding_mask' must name the mask input (its forward argument name "
                                f"or position), or be None (detected) or False (none). Got {self.padding_mask!r}.")
        if self.padded_inputs is not None and (
                not isinstance(self.padded_inputs, (tuple, list)) or self.padding_mask in (None, False)
                or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in self.padded_inputs)):
            raise PipelineError(f"{where}: Pipeline 'padded_inputs' must be a list of input names or positions, given "
                                f"with padding_mask. Got padded_inputs={self.padded_inputs!r}, "
                                f"padding_mask={self.padding_mask!r}.")
        if self.model_form not in ("module", "exported", "scripted"):
            raise PipelineError(f"{where}: Pipeline 'model_form' must be one of ['module', 'exported', 'scripted']. "
                                f"Got {self.model_form!r}.")

    def reference_model(self):
        return (self.build_reference or self.build_model)()

    def train_blocks(self, model) -> tuple[str, list]:
        """(where the blocks are, the blocks) that checkpointing wraps."""
        if self.blocks is not None:
            return "the pipeline's blocks()", list(self.blocks(model))
        from .knobs.checkpointing import find_blocks

        name, blocks = find_blocks(model)
        return (f"{name or 'the model'} ({len(blocks)} x {type(blocks[0]).__name__})" if blocks else ""), blocks

    def optimizer(self, params):
        import torch

        return self.make_optimizer(params) if self.make_optimizer is not None else torch.optim.AdamW(params, lr=1e-3)

    def n_inputs(self) -> int:
        return len(self.make_inputs(1))


def bundled_pipelines() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.py") if not p.name.startswith("_"))


def load_pipeline(ref: str | os.PathLike | Pipeline | None = None) -> Pipeline:
    """A pipeline from a file path, a bundled name (see `bundled_pipelines()`), or as given."""
    if isinstance(ref, Pipeline):
        return ref
    ref = DEFAULT_PIPELINE if ref is None else os.fspath(ref)
    path = Path(ref)
    if not (path.suffix == ".py" or os.sep in ref or path.exists()):
        bundled = BUNDLED_DIR / f"{ref}.py"
        if not bundled.exists():
            raise PipelineError(
                f"{ref}: no such pipeline file, and not a bundled pipeline name. "
                f"Expected a path to a .py file or one of {bundled_pipelines()}."
            )
        path = bundled
    if not path.is_file():
        raise PipelineError(f"{ref}: pipeline file not found.")
    module_name = f"autoopt_pipeline_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pickling and dataclasses look functions up by module
    try:
        spec.loader.exec_module(module)
    except PipelineError:
        raise
    except BaseException as exc:  # noqa: BLE001 - any import failure is the user's file's problem
        sys.modules.pop(module_name, None)
        raise PipelineError(f"{path}: failed to import: {_one_line(exc)}") from exc
    pipeline = getattr(module, "PIPELINE", None)
    if pipeline is None:
        raise PipelineError(f"{path}: defines no PIPELINE. Add `PIPELINE = autoopt.Pipeline(name=..., ...)`.")
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(f"{path}: PIPELINE must be an autoopt.Pipeline. Got {type(pipeline).__name__}.")
    pipeline.source = str(path.resolve())
    return pipeline


def check_pipeline(pipeline: Pipeline) -> None:
    """Call the pipeline's functions once and check what they return, so that a broken pipeline fails
    here with its file named, not in the middle of a search."""
    import torch
    from torch.utils import _pytree as pytree

    where = pipeline.source or f"pipeline {pipeline.name!r}"
    models = {}  # built once here: a builder may train or download
    for attr in ("build_model", "build_reference"):
        fn = getattr(pipeline, attr)
        if fn is None:
            continue
        models[attr] = model = _call(where, attr, fn)
        if not isinstance(model, torch.nn.Module):
            raise PipelineError(f"{where}: {attr}() must return a torch.nn.Module. Got {type(model).__name__}.")
    inputs = _call(where, "make_inputs", pipeline.make_inputs, 2)
    if not isinstance(inputs, tuple) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        got = type(inputs).__name__ if not isinstance(inputs, tuple) else f"({', '.join(type(t).__name__ for t in inputs)})"
        raise PipelineError(f"{where}: make_inputs(2) must return a non-empty tuple of tensors, e.g. (x,). Got {got}.")
    for i, tensor in enumerate(inputs):
        if tensor.dim() == 0 or tensor.shape[0] != 2:
            raise PipelineError(
                f"{where}: make_inputs(2) must return tensors whose first dimension is the batch size 2; "
                f"input {i} has shape {tuple(tensor.shape)}."
            )
    structure = None
    for attr, model in models.items():
        model.eval()
        with torch.inference_mode():
            outputs = _call(where, f"the forward of {attr}()'s model on make_inputs(2)", model, *inputs)
        leaves, spec = pytree.tree_flatten(outputs)
        shapes = [tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else None for leaf in leaves]
        if structure is not None and structure != (spec, shapes):
            raise PipelineError(f"{where}: build_reference()'s model must return what build_model()'s returns (the same "
                                f"structure and shapes: it is the yardstick of the same task). Got {shapes} from it and "
                                f"{structure[1]} from build_model().")
        structure = structure or (spec, shapes)
        if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            raise PipelineError(f"{where}: the model of {attr}() must return a tensor, or a tuple or dict of tensors. "
                                f"Got {type(outputs).__name__}.")
        if not all(torch.isfinite(leaf).all() for leaf in leaves if leaf.is_floating_point()):
            raise PipelineError(f"{where}: the model of {attr}() returns NaN or infinite values on make_inputs(2): "
                                "nothing can be compared with it. Fix the model or its weights.")
    _check_input_batches(pipeline, where, len(inputs))


def _check_input_batches(pipeline: Pipeline, where: str, n_inputs: int) -> None:
    """calibration_data and distill_data yield tuples of input tensors, like make_inputs."""
    import itertools

    import torch

    fallbacks = {"calibration_data": "make_inputs batches", "distill_data": "make_batch, calibration_data or make_inputs"}
    for attr, fallback in fallbacks.items():
        fn = getattr(pipeline, attr)
        if fn is None:
            continue
        batches = _call(where, f"{attr}()", lambda fn=fn: [tuple(b) for b in itertools.islice(fn(), 4)])
        for batch in batches:
            if len(batch) != n_inputs or not all(isinstance(t, torch.Tensor) for t in batch):
                raise PipelineError(f"{where}: {attr}() must yield tuples of {n_inputs} tensor(s), like "
                                    f"make_inputs. Got ({', '.join(type(t).__name__ for t in batch)}).")
        if not batches:
            raise PipelineError(f"{where}: {attr}() yielded no batch. Yield some, or drop {attr} "
                                f"({fallback} are used then).")


def check_training(pipeline: Pipeline) -> tuple[str, int]:
    """Check the training contract once (one step of the reference); returns where the repeated
    blocks are and how many (0: none found)."""
    import torch

    where = pipeline.source or f"pipeline {pipeline.name!r}"
    missing = [a for a in ("make_batch", "loss_fn") if getattr(pipeline, a) is None]
    if missing:
        raise PipelineError(f"{where}: {option('task', 'train')} needs make_batch and loss_fn in the Pipeline; missing "
                            f"{', '.join(missing)}. Add make_batch(batch_size) -> (inputs..., targets...) and "
                            f"loss_fn(outputs, batch) -> scalar tensor.")
    batch = _call(where, "make_batch", pipeline.make_batch, 2)
    n = pipeline.n_inputs()
    if not isinstance(batch, tuple) or len(batch) <= n or not all(isinstance(t, torch.Tensor) for t in batch):
        length = len(batch) if isinstance(batch, tuple) else "-"
        raise PipelineError(f"{where}: make_batch(2) must return a tuple of tensors: the model's {n} input(s), then "
                            f"the targets. Got {type(batch).__name__} of length {length}.")
    model = pipeline.build_model().train()
    outputs = _call(where, "the model's forward on make_batch(2)", model, *batch[:n])
    loss = _call(where, "loss_fn", pipeline.loss_fn, outputs, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise PipelineError(f"{where}: loss_fn(outputs, batch) must return a scalar tensor that requires grad. "
                            f"Got {loss!r}.")
    found, blocks = pipeline.train_blocks(model)
    if pipeline.blocks is not None and (not blocks or not all(isinstance(b, torch.nn.Module) for b in blocks)):
        raise PipelineError(f"{where}: blocks(model) must return a non-empty list of nn.Module. Got {blocks!r}.")
    return found, len(blocks)


def check_metric(where: str, value: object) -> float:
    import math
    import numbers

    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise PipelineError(f"{where}: evaluate(predict) must return a number (higher is better). Got {value!r}.")
    return float(value)


def call_user(pipeline: Pipeline, what: str, fn: Callable, *args):
    """A call into the user's pipeline code: what it raises becomes a PipelineError naming the file."""
    return _call(pipeline.source or f"pipeline {pipeline.name!r}", what, fn, *args)


def _call(where: str, what: str, fn: Callable, *args):
    try:
        return fn(*args)
    except Exception as exc:
        raise PipelineError(f"{where}: {what} raised {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__
