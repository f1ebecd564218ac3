"""Nested outputs (a dict holding a tuple) and a data-dependent branch: the hard cases for export."""

import torch
from torch import nn

import autoopt


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.head = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x, scale):
        h = torch.relu(self.fc1(x))
        if bool(scale.sum() > 0):  # data-dependent: a trace records one branch only
            h = h * 2
        return {"logits": self.head(h), "extra": (h.mean(dim=1), h.amax(dim=1))}


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return Nested().eval()


def make_inputs(batch_size: int):
    g = torch.Generator().manual_seed(batch_size)
    sign = 1.0 if batch_size % 2 else -1.0  # odd and even batches take different branches
    return (torch.randn(batch_size, 6, generator=g), torch.full((batch_size, 1), sign))


PIPELINE = autoopt.Pipeline(name="tiny_nested", build_model=build_model, make_inputs=make_inputs)
