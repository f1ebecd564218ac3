"""The accuracy of a candidate against the reference.

With an `evaluate` in the pipeline, accuracy is that metric and accuracy_drop = reference metric -
candidate metric. Without it, accuracy is output fidelity: the mean cosine similarity between the
candidate's and the reference's outputs, per sample and per output tensor, on FIDELITY_BATCHES
batches from `make_inputs` (seeded); the reference scores 1.0, so accuracy_drop = 1 - fidelity.
"""

from __future__ import annotations

from ..pipeline import Pipeline, call_user, check_metric

FIDELITY_BATCHES = 4
FIDELITY_BATCH_SIZE = 16


def fidelity_inputs(pipeline: Pipeline) -> list[tuple]:
    import torch

    batches = []
    for seed in range(FIDELITY_BATCHES):
        torch.manual_seed(seed)
        batches.append(pipeline.make_inputs(FIDELITY_BATCH_SIZE))
    return batches


def cosine_fidelity(candidate_outputs, reference_outputs) -> float:
    """Mean per-sample cosine similarity over all output tensors (1.0 = same direction everywhere)."""
    import torch
    from torch.utils import _pytree as pytree

    scores = []
    for cand, ref in zip(pytree.tree_leaves(candidate_outputs), pytree.tree_leaves(reference_outputs)):
        cand, ref = cand.detach().float().cpu(), ref.detach().float().cpu()
        if cand.shape != ref.shape:
            return 0.0
        if ref.dim() == 0:
            cand, ref = cand.reshape(1, 1), ref.reshape(1, 1)
        cand, ref = cand.reshape(ref.shape[0], -1), ref.reshape(ref.shape[0], -1)
        same = torch.isclose(cand, ref, rtol=1e-6, atol=1e-8).all(dim=1)
        cos = torch.nn.functional.cosine_similarity(cand, ref, dim=1, eps=1e-12)
        scores.append(torch.where(same, torch.ones_like(cos), cos).nan_to_num(0.0))
    return float(torch.cat(scores).mean()) if scores else 0.0


def reference_accuracy(pipeline: Pipeline) -> float:
    """The reference's score: its `evaluate` metric on the eager fp32 reference model, or 1.0."""
    if pipeline.evaluate is None:
        return 1.0
    from ..runtimes.eager import predictor

    where = pipeline.source or f"pipeline {pipeline.name!r}"
    model = pipeline.reference_model().eval()
    return check_metric(where, call_user(pipeline, "evaluate(predict) of the reference", pipeline.evaluate, predictor(model)))


def candidate_accuracy(pipeline: Pipeline, predict) -> float:
    """The candidate's score on the same scale as `reference_accuracy`."""
    import torch

    if pipeline.evaluate is not None:
        where = pipeline.source or f"pipeline {pipeline.name!r}"
        return check_metric(where, pipeline.evaluate(predict))
    reference = pipeline.reference_model().eval()
    scores = []
    for inputs in fidelity_inputs(pipeline):
        with torch.inference_mode():
            expected = reference(*inputs)
        scores.append(cosine_fidelity(predict(*inputs), expected))
    return sum(scores) / len(scores)
