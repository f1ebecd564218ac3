"""eager: the PyTorch module as it is, under inference_mode. The reference runtime."""

from __future__ import annotations

import copy
import io

from .base import BuildContext, Built, Prepared, cast_inputs, to_reference_dtypes


def unavailable(device: str) -> str | None:
    return None


def conflict(config: dict, device: str) -> str | None:
    return None


def model_dtype(model):
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def predictor(model, device: str = "cpu"):
    import torch

    dtype = model_dtype(model)

    def predict(*inputs):
        with torch.inference_mode():
            return to_reference_dtypes(model(*cast_inputs(inputs, dtype, device)))

    return predict


def prepare(model, example_inputs: tuple, config: dict, ctx: BuildContext) -> Prepared:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return Prepared(buffer.getbuffer().nbytes / 1e6, state={"model": model.eval()})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch

    # A copy, so that the served weights are allocated inside the memory measurement like a loaded file's.
    model = copy.deepcopy(prepared.state["model"]).to(ctx.device).eval()
    sync = torch.cuda.synchronize if ctx.device == "cuda" else None
    return Built(predictor(model, ctx.device), sync=sync)
