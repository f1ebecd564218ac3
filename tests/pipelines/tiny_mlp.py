"""A tiny classifier with an evaluate metric: fast enough for end-to-end tests."""

import torch
from torch import nn

import autoopt


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def make_inputs(batch_size: int):
    g = torch.Generator().manual_seed(batch_size)
    return (torch.randn(batch_size, 16, generator=g),)


def evaluate(predict) -> float:
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(123))
    with torch.inference_mode():
        labels = build_model()(x).argmax(dim=1)  # the reference scores 1.0 by construction
    return float((predict(x).argmax(dim=1) == labels).float().mean())


PIPELINE = autoopt.Pipeline(name="tiny_mlp", build_model=build_model, make_inputs=make_inputs, evaluate=evaluate)
