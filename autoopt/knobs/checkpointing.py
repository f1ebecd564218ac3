"""checkpointing: activation checkpointing of the model's repeated blocks (training task only).

`none` keeps every activation for the backward pass; `every_k` recomputes every k-th block in the
backward instead of storing its inner activations; `all` (= every_1) does so for every block. Finer
granularity trades step time (one more forward of the wrapped blocks) for activation memory, which
lets a larger batch fit a memory budget. Non-reentrant checkpointing (`use_reentrant=False`): it
supports keyword arguments, autocast and torch.compile, and keeps the RNG state for dropout.
Realized by the training step (autoopt.trial.training), on the blocks the pipeline names or that
`find_blocks` detects.
"""

from __future__ import annotations

from .base import Knob

MAX_K = 16
CHOICES = ("none", "all", *(f"every_{k}" for k in range(2, MAX_K + 1)))


def every(value: str) -> int | None:
    """The k of a value: every k-th block is checkpointed (None: no block is)."""
    if value == "none":
        return None
    return 1 if value == "all" else int(value.split("_")[1])


def find_blocks(model) -> tuple[str, list]:
    """The model's repeated blocks: the largest nn.ModuleList / nn.Sequential whose children all have
    one type (at least 2), as (its qualified name, the blocks); ("", []) when there is none."""
    from torch import nn

    best: tuple[str, list] = ("", [])
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            children = list(module.children())
            if len(children) >= 2 and len({type(c) for c in children}) == 1 and len(children) > len(best[1]):
                best = (name, children)
    return best


def wrap(blocks: list, value: str) -> int:
    """Checkpoint every k-th block in place (block i with i % k == 0); returns how many were wrapped."""
    from torch.utils.checkpoint import checkpoint

    k = every(value)
    if k is None:
        return 0
    wrapped = 0
    for i, block in enumerate(blocks):
        if i % k == 0:
            forward = block.forward  # the instance keeps its type and attributes (TransformerEncoder reads them)
            block.forward = lambda *args, _forward=forward, **kwargs: checkpoint(
                _forward, *args, use_reentrant=False, **kwargs)
            wrapped += 1
    return wrapped


KNOB = Knob(
    name="checkpointing",
    doc="Activation checkpointing of the repeated blocks: none, every_k (every k-th block), all.",
    baseline="none",
    choices=CHOICES,
    tasks=("train",),
)
