"""pruning_amount: the fraction of weights (l1_unstructured), channels (structured) or blocks (depth) removed.

Pruning happens first, before distillation (distill_steps: recovers what pruning takes), quantization
and export; the accuracy constraint decides how much a model tolerates.
- l1_unstructured: the smallest-magnitude weights of every Linear/Conv are zeroed. The dense kernels
  do the same work, so there is no speedup; the model compresses better.
- structured: torch-pruning removes whole channels/neurons (dependency-aware, magnitude importance).
  The layers that produce the model's outputs keep their size, attention keeps its embedding width
  and heads (only feed-forward widths are pruned), and the pruned model is checked with a forward pass
  that must return the same output structure and shapes.
- depth: whole repeated blocks are dropped (the blocks checkpointing finds, or the pipeline's
  blocks()): every other one at 0.5, the first kept, the rest keeping their weights. With
  distillation, this is how small encoders are made from large ones.
"""

from __future__ import annotations

import operator

from ..errors import Unsupported
from .base import Knob


SCOPE = {"pruning_method": "structured"}  # what a structured-pruning failure rules out


def _apply(model, config: dict, ctx):
    amount = float(config["pruning_amount"])
    if amount == 0:
        return model
    method = config.get("pruning_method", "l1_unstructured")
    if method == "l1_unstructured":
        return _l1_unstructured(model, amount)
    if method == "depth":
        return _depth(model, amount, ctx)
    return _structured(model, amount, ctx.example_inputs)


def _l1_unstructured(model, amount: float):
    import torch
    from torch.nn.utils import prune

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    return model


def _structured(model, amount: float, example_inputs: tuple):
    import torch
    import torch_pruning as tp
    from torch.utils import _pytree as pytree

    with torch.no_grad():
        before = model(*example_inputs)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    # Attention and normalization keep the embedding width: only feed-forward widths are pruned.
    ignored = [m for m in model.modules()
               if isinstance(m, (torch.nn.MultiheadAttention, torch.nn.LayerNorm, torch.nn.Embedding))]
    ignored += _output_layers(model, example_inputs)
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=amount, ignored_layers=ignored, num_heads=heads,
        )
        pruner.step()
        with torch.no_grad():
            after = model(*example_inputs)
    except Exception as exc:
        raise Unsupported(f"structured pruning cannot handle this model: {type(exc).__name__}: {exc}"[:300], SCOPE) from exc
    shapes = lambda out: [(tuple(t.shape)) for t in pytree.tree_leaves(out)]  # noqa: E731
    if pytree.tree_structure(after) != pytree.tree_structure(before) or shapes(after) != shapes(before):
        raise Unsupported("structured pruning changed the model's output shapes; it cannot prune this model safely", SCOPE)
    return model


def _depth(model, amount: float, ctx):
    """Drop `amount` of the repeated blocks, evenly spaced (every other one at 0.5, the first kept);
    the blocks kept keep their weights. Only blocks whose output has their input's shape can go."""
    import torch
    from torch.utils import _pytree as pytree

    from .checkpointing import find_blocks

    scope = {"pruning_method": "depth"}
    if ctx.pipeline is not None and ctx.pipeline.blocks is not None:
        blocks = list(ctx.pipeline.blocks(model))
        container = next((m for m in model.modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))
                          and blocks and all(any(b is c for c in m.children()) for b in blocks)), None)
    else:
        name, blocks = find_blocks(model)
        container = model.get_submodule(name) if blocks else None
    if container is None or len(blocks) < 2:
        raise Unsupported("depth pruning needs repeated blocks (an nn.ModuleList or nn.Sequential of at least 2 blocks "
                          "of one type, or the pipeline's blocks()) and this model has none", scope)
    keep = max(1, len(blocks) - round(len(blocks) * amount))
    if keep == len(blocks):
        raise Unsupported(f"depth pruning at {amount:g} drops no block of {len(blocks)}", {**scope, "pruning_amount": amount})
    shapes: dict = {}

    def record(module, args, out):
        first_in = next((a for a in args if isinstance(a, torch.Tensor)), None)
        first_out = next(iter(pytree.tree_leaves(out)), None)
        shapes.setdefault(id(module), (getattr(first_in, "shape", None), getattr(first_out, "shape", 0)))

    hooks = [b.register_forward_hook(record) for b in blocks]
    try:
        with torch.no_grad():
            before = model(*ctx.example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if any(operator.ne(*shapes.get(id(b), (None, 0))) for b in blocks):
        raise Unsupported("depth pruning drops only blocks that keep their input's shape; these change it", scope)
    kept = {int(i * len(blocks) / keep) for i in range(keep)}
    children = list(container.children())
    dropped = [i for i, c in enumerate(children) for j, b in enumerate(blocks) if c is b and j not in kept]
    for i in sorted(dropped, reverse=True):
        del container[i]
    for parent in model.modules():  # nn.TransformerEncoder keeps a count beside its layers
        if getattr(parent, "layers", None) is container and hasattr(parent, "num_layers"):
            parent.num_layers = keep
    with torch.no_grad():
        after = model(*ctx.example_inputs)
    if pytree.tree_structure(after) != pytree.tree_structure(before) or \
            [t.shape for t in pytree.tree_leaves(after)] != [t.shape for t in pytree.tree_leaves(before)]:
        raise Unsupported("depth pruning changed the model's output shapes", scope)
    return model


# Autograd nodes that keep the channel axis of their input in their output: an output computed
# through them (relu(fc(x)) * 2, a masked mean) has the width of the layer behind them.
PASS_THROUGH = ("Relu", "Gelu", "Silu", "Sigmoid", "Tanh", "LeakyRelu", "Hardtanh", "Elu", "Softmax", "LogSoftmax",
                "Mul", "Div", "Add", "Sub", "Neg", "Clamp", "Clone", "Dropout", "NativeDropout", "Sum", "Mean",
                "View", "Reshape", "Unsqueeze", "Squeeze", "Contiguous", "ToCopy")


def _output_layers(model, example_inputs: tuple) -> list:
    """Leaf modules whose output width is one of the model's outputs' (directly, or through elementwise
    ops): pruning them would change an output's shape."""
    import torch
    from torch.utils import _pytree as pytree

    produced: dict = {}  # autograd node of a leaf module's output -> the module

    def record(module, _inputs, output):
        for t in pytree.tree_leaves(output):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                produced[t.grad_fn] = module

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.enable_grad():
            outputs = model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    found: list = []
    for t in pytree.tree_leaves(outputs):
        stack, seen = [getattr(t, "grad_fn", None)], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in produced:
                found += [produced[node]] if produced[node] not in found else []
            elif node.name().removesuffix("Backward0").removesuffix("Backward1") in PASS_THROUGH:
                stack.extend(n for n, _ in node.next_functions)
    return found


KNOB = Knob(
    name="pruning_amount",
    doc="Fraction pruned (0 = off): weights zeroed (l1_unstructured), channels removed (structured) or repeated "
        "blocks dropped (depth).",
    baseline=0.0,
    bounds=(0.0, 0.9),
    apply=_apply,
    tolerance=(0.95, float("inf")),  # by design: the metric check of the export bounds it
    programs=(),  # prunes nn.Linear / nn.Conv modules: a program's layers are graph ops
)
