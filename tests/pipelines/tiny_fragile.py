"""A tiny model whose middle layer breaks in int8 (the int8_layers tests): three Linear layers."""

import torch
from torch import nn

import autoopt


class Fragile(nn.Module):
    """Three Linear layers; the middle one breaks in int8. One input column of its weight is 1000x the
    rest and meets a channel that ReLU always zeroes: nothing in float, but in int8 the column sets every
    row's scale, and the row's other weights round to zero."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.mid, self.last = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)
        with torch.no_grad():
            self.first.weight[0].zero_()
            self.first.bias[0] = -1.0  # channel 0 is always 0 after the ReLU
            self.mid.weight[:, 0] = 1000.0

    def forward(self, x):
        return self.last(torch.relu(self.mid(torch.relu(self.first(x)))))


def make_inputs(batch_size: int):
    return (torch.randn(batch_size, 16, generator=torch.Generator().manual_seed(batch_size)),)


def calibration_data():
    return [make_inputs(32 + i) for i in range(4)]


def build_model():
    return Fragile().eval()


PIPELINE = autoopt.Pipeline("fragile", build_model, make_inputs, calibration_data=calibration_data)
