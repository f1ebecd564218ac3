"""Two inputs, dict output, no evaluate: accuracy is output fidelity against the reference."""

import torch
from torch import nn

import autoopt


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, features, mask):
        hidden = torch.relu(self.embed(features)) * mask.unsqueeze(-1)
        return {"logits": self.head(hidden), "pooled": hidden.mean(dim=1)}


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputs().eval()


def make_inputs(batch_size: int):
    return (torch.randn(batch_size, 5, 8), torch.ones(batch_size, 5))


PIPELINE = autoopt.Pipeline(name="tiny_dict", build_model=build_model, make_inputs=make_inputs)
