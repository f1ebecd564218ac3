"""pruning_amount: the fraction of weights (l1_unstructured) or channels (structured) removed.

Pruning happens first, before quantization and export, and without fine-tuning: the accuracy
constraint decides how much a model tolerates.
- l1_unstructured: the smallest-magnitude weights of every Linear/Conv are zeroed. The dense kernels
  do the same work, so there is no speedup; the model compresses better.
- structured: torch-pruning removes whole channels/neurons (dependency-aware, magnitude importance).
  The layers that produce the model's outputs keep their size, attention keeps its embedding width
  and heads (only feed-forward widths are pruned), and the pruned model is checked with a forward pass
  that must return the same output structure and shapes.
"""

from __future__ import annotations

from ..errors import Unsupported
from .base import Knob


SCOPE = {"pruning_method": "structured"}  # what a structured-pruning failure rules out


def _apply(model, config: dict, ctx):
    amount = float(config["pruning_amount"])
    if amount == 0:
        return model
    if config.get("pruning_method", "l1_unstructured") == "l1_unstructured":
        return _l1_unstructured(model, amount)
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


def _output_layers(model, example_inputs: tuple) -> list:
    """Leaf modules whose output tensor is one of the model's outputs: their width is the output's."""
    import torch
    from torch.utils import _pytree as pytree

    produced: dict[int, torch.nn.Module] = {}

    def record(module, _inputs, output):
        # The last writer wins: an id can only be reused after its tensor was freed, and the
        # model's outputs stay alive to the end.
        produced[id(output)] = module

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            outputs = model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return [produced[id(t)] for t in pytree.tree_leaves(outputs) if id(t) in produced]


KNOB = Knob(
    name="pruning_amount",
    doc="Fraction pruned (0 = off): weights zeroed (l1_unstructured) or channels removed (structured).",
    baseline=0.0,
    bounds=(0.0, 0.9),
    apply=_apply,
    tolerance=(0.95, float("inf")),  # by design: the metric check of the export bounds it
)
