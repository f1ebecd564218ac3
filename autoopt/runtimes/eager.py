"""eager: the PyTorch module as it is, under inference_mode. The reference runtime."""

from __future__ import annotations

import copy

from .base import BuildContext, Built, Prepared, model_dtype, state_dict_mb, torch_predictor

PROGRAMS = frozenset({"exported", "scripted"})  # the saved programs it builds from (autoopt.study.programs)
EXPORT = None  # nothing of its own to ship


def predictor(model, device: str = "cpu"):
    import torch

    return torch_predictor(model, model_dtype(model), device, grad_mode=torch.inference_mode)


def train_forward(model, config: dict):
    return model


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    return Prepared(state_dict_mb(model), state={"model": model})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch

    # A copy, so that the served weights are allocated inside the memory measurement like a loaded file's.
    model = copy.deepcopy(prepared.state["model"]).to(ctx.device)
    model.eval()
    sync = torch.cuda.synchronize if ctx.device == "cuda" else None
    return Built(predictor(model, ctx.device), sync=sync)
