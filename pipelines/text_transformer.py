"""A second bundled pipeline: a small transformer encoder text classifier on a generated task.

Token + position embeddings, 4 standard `nn.TransformerEncoderLayer`s (hidden 256, 4 heads, FFN
1024), a padding mask from `attention_mask`, masked mean pooling and a linear head. The forward
returns a dict (`logits`, `pooled`), so every runtime and the accuracy check handle structured
outputs. The task: sequences of 8 to 32 tokens mix filler words with keywords of 4 topics; the label
is the topic whose keywords occur most often. Batches are padded on the right to 64 positions, as serving
code pads to a fixed length (`padding="max_length"`): most of every batch is padding (the trim_padding
knob finds `attention_mask` and cuts it). The model trains on first use (under 2 minutes on 2 cores) and
caches its weights in autoopt's cache directory, loaded with `weights_only=True`.
It is written the way PyTorch intends (the fused encoder fast path applies in eval mode): no knob
gets to look good against a deliberately slow eager model. It also defines the training contract
(make_batch, loss_fn) for `autoopt search --task train`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import autoopt

VOCAB, MAX_LEN, TOPICS, KEYWORDS_PER_TOPIC = 512, 32, 4, 16
PADDED_LEN = 64  # the length every batch is padded to
D_MODEL, HEADS, FFN, LAYERS = 256, 4, 1024, 4
SEED, STEPS, TRAIN_BATCH = 0, 300, 32
WEIGHTS_VERSION = 2  # bump when the architecture, task or recipe changes


class TextTransformer(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, D_MODEL, padding_idx=0)
        self.positions = nn.Embedding(PADDED_LEN, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, TOPICS)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return {"logits": self.head(pooled), "pooled": pooled}


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels): n padded sequences of the keyword-majority task."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, PADDED_LEN, dtype=torch.long)
    mask = torch.zeros(n, PADDED_LEN, dtype=torch.long)
    labels = torch.randint(0, TOPICS, (n,), generator=g)
    first_filler = 1 + TOPICS * KEYWORDS_PER_TOPIC
    for i in range(n):
        length = int(torch.randint(8, MAX_LEN + 1, (1,), generator=g))
        winner = int(torch.randint(3, 6, (1,), generator=g))
        counts = [winner if t == labels[i] else int(torch.randint(0, winner, (1,), generator=g)) for t in range(TOPICS)]
        words = [1 + t * KEYWORDS_PER_TOPIC + int(torch.randint(0, KEYWORDS_PER_TOPIC, (1,), generator=g))
                 for t, c in enumerate(counts) for _ in range(c)][:length]
        words += torch.randint(first_filler, VOCAB, (length - len(words),), generator=g).tolist()
        order = torch.randperm(length, generator=g)
        ids[i, :length] = torch.tensor(words)[order]
        mask[i, :length] = 1
    return ids, mask, labels


@functools.cache
def _heldout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return generate(512, seed=SEED + 1)


def _train() -> TextTransformer:
    torch.manual_seed(SEED)
    model = TextTransformer(dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=STEPS)
    ids, mask, labels = generate(STEPS * TRAIN_BATCH, seed=SEED)
    ids, mask = ids[:, :MAX_LEN], mask[:, :MAX_LEN]  # the same training, without the all-padding positions
    model.train()
    for step in range(STEPS):
        batch = slice(step * TRAIN_BATCH, (step + 1) * TRAIN_BATCH)
        loss = F.cross_entropy(model(ids[batch], mask[batch])["logits"], labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def build_model() -> nn.Module:
    model = TextTransformer()
    model.load_state_dict(autoopt.cached_state_dict(f"text_transformer-v{WEIGHTS_VERSION}", _train))
    return model.eval()


def make_inputs(batch_size: int) -> tuple[torch.Tensor, ...]:
    ids, mask, _ = _heldout()
    idx = torch.arange(batch_size) % len(ids)
    return (ids[idx].contiguous(), mask[idx].contiguous())


def evaluate(predict) -> float:
    ids, mask, labels = _heldout()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(ids), 64):
            logits = predict(ids[start:start + 64], mask[start:start + 64])["logits"]
            correct += int((logits.argmax(dim=1) == labels[start:start + 64]).sum())
    return correct / len(labels)


@functools.cache
def _train_pool() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return generate(2048, seed=SEED + 3)


def make_batch(batch_size: int) -> tuple[torch.Tensor, ...]:
    """One training batch for `--task train`: the model's inputs, then the labels. Random rows of a
    fixed pool, drawn with torch's global generator (autoopt seeds it for the numerics check)."""
    ids, mask, labels = _train_pool()
    idx = torch.randint(0, len(ids), (batch_size,))
    return (ids[idx], mask[idx], labels[idx])


def loss_fn(outputs: dict[str, torch.Tensor], batch: tuple) -> torch.Tensor:
    return F.cross_entropy(outputs["logits"], batch[2])


def calibration_data():
    ids, mask, _ = generate(8 * 32, seed=SEED + 2)
    return [(ids[i:i + 32], mask[i:i + 32]) for i in range(0, len(ids), 32)]


PIPELINE = autoopt.Pipeline(
    name="text_transformer",
    build_model=build_model,
    make_inputs=make_inputs,
    evaluate=evaluate,
    calibration_data=calibration_data,
    make_batch=make_batch,
    loss_fn=loss_fn,
    # blocks: found by autoopt (encoder.layers, 4 x TransformerEncoderLayer); the optimizer: AdamW.
)
