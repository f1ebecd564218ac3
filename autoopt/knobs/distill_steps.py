"""distill_steps: recovery after pruning by knowledge distillation (0 = off).

The pruned model is trained for this many steps to reproduce the original model's outputs (see
autoopt.distill: the teacher, the loss, the data, the cache). It runs after pruning and before
quantization, precision and the runtime, in the worker with the trial's threads; its seconds are
build time (`distill_s`), never latency. Only matters when channels or blocks were pruned.
"""

from __future__ import annotations

from .base import Knob


def _pruned(config: dict) -> bool:
    """Channels or blocks were removed. Zeroed weights (l1_unstructured) are not distilled: training
    would fill the zeros in again, and their model is no faster to begin with."""
    return config.get("pruning_amount", 0.0) > 0 and config.get("pruning_method") in ("structured", "depth")


def _apply(model, config: dict, ctx):
    steps = int(config["distill_steps"])
    if steps == 0 or not _pruned(config):
        return model
    if ctx.pipeline is None:
        raise ValueError("distill_steps needs the pipeline in the build context (its teacher and data)")
    from ..distill import distilled

    model, report, note = distilled(model, ctx.pipeline, steps, ctx.example_inputs, ctx.workdir)
    ctx.report.update(report)
    if note:
        ctx.notes.append(note)
    return model


KNOB = Knob(
    name="distill_steps",
    doc="Steps of knowledge distillation from the original model after pruning (0 = off): recovers the accuracy "
        "pruning takes.",
    baseline=0,
    bounds=(0, 100_000),
    integer=True,
    relevant=_pruned,
    relevant_in={"pruning_amount": 0.5, "pruning_method": "structured"},
    apply=_apply,
    retrains=True,  # an export is compared with the distilled student; the metric check bounds the rest
    programs=("exported",),  # trains the program's parameters (TorchScript takes no forward hooks); relevant after pruning
)
