"""A student model scored against a different teacher (build_reference): the metric's yardstick differs from
the model the knobs transform, so an fp32 export of build_model must still verify against build_model."""

import torch
from torch import nn

import autoopt


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def make_inputs(batch_size: int):
    return (torch.randn(batch_size, 16, generator=torch.Generator().manual_seed(batch_size)),)


def evaluate(predict) -> float:
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(123))
    with torch.inference_mode():
        labels = _mlp(1)(x).argmax(dim=1)  # the teacher's answers
    return float((predict(x).argmax(dim=1) == labels).float().mean())


PIPELINE = autoopt.Pipeline(name="with_reference", build_model=lambda: _mlp(0), make_inputs=make_inputs,
                            evaluate=evaluate, build_reference=lambda: _mlp(1))
