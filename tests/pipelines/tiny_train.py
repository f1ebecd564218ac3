"""A small transformer with the training contract: activations dominate its step's memory, so
checkpointing granularity shows in the peak."""

import os

import torch
import torch.nn.functional as F
from torch import nn

import autoopt

SEQ, D, LAYERS = 64, 64, 4


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, D)
        layer = nn.TransformerEncoderLayer(D, 4, 4 * D, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def make_inputs(batch_size: int):
    return (torch.randint(0, 100, (batch_size, SEQ), generator=torch.Generator().manual_seed(batch_size)),)


def make_batch(batch_size: int):
    ids = torch.randint(0, 100, (batch_size, SEQ))
    return (ids, ids[:, 0] % 3)


def loss_fn(outputs, batch):
    loss = F.cross_entropy(outputs, batch[1])
    if os.environ.get("TINY_TRAIN_NAN_UNDER_BF16") and torch.is_autocast_enabled("cpu"):
        return loss * float("nan")  # a numerics failure, for the tests
    return loss


PIPELINE = autoopt.Pipeline(name="tiny_train", build_model=build_model, make_inputs=make_inputs,
                            make_batch=make_batch, loss_fn=loss_fn)
