"""A tiny masked text model (the trim_padding tests): token ids and an attention mask padded on the right to
24 positions, one transformer layer, masked mean pooling; a metric that compares the pooled outputs with the
original model's. Its outputs do not depend on the padding, so trimming it keeps them."""

import torch
from torch import nn

import autoopt

VOCAB, PADDED, DIM = 50, 24, 16


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.positions = nn.Embedding(64, DIM)
        self.layer = nn.TransformerEncoderLayer(DIM, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(DIM, 3)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1])
        hidden = self.layer(self.tokens(input_ids) + self.positions(positions), src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return {"logits": self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1))}


def make_inputs(batch_size: int, length: int = PADDED, seed: int | None = None):
    """Rows of 3 to 11 real tokens, padded with zeros to `length`."""
    g = torch.Generator().manual_seed(batch_size if seed is None else seed)
    lengths = torch.randint(3, 12, (batch_size,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return torch.randint(1, VOCAB, (batch_size, length), generator=g) * mask, mask


def build_model():
    return Masked().eval()


def evaluate(predict) -> float:
    """Agreement of the predicted class with the original model's (held-out rows)."""
    model = build_model()
    agree = total = 0
    with torch.inference_mode():
        for seed in range(4):
            ids, mask = make_inputs(32, seed=1000 + seed)
            agree += int((predict(ids, mask)["logits"].argmax(1) == model(ids, mask)["logits"].argmax(1)).sum())
            total += 32
    return agree / total


def calibration_data():
    return [make_inputs(16, seed=100 + i) for i in range(4)]


PIPELINE = autoopt.Pipeline("masked", build_model, make_inputs, evaluate=evaluate, calibration_data=calibration_data)
