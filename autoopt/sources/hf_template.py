"""A pipeline for a Hugging Face model, written by `autoopt search hf:...`. Edit it freely: `autoopt search
THIS_FILE` runs the same search.

Inputs: TEXTS tokenized and padded on the right to SEQ_LEN tokens (input_ids, attention_mask). The even lines
are the metric's (and make_inputs'), the odd lines calibrate int8: disjoint parts of the texts.
Metric, by TASK: "encode", the mean cosine of the mean-pooled, normalized embeddings to the original model's;
"classify", the share of texts whose predicted label is the original's (with LABELS_FILE, the true label:
an accuracy); "token", the share of real (unpadded) tokens whose predicted label is the original's.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

import autoopt

# --- settings (written by autoopt) ---
NAME = "hf_model"
MODEL_DIR = "."
TASK = "encode"
TEXTS_FILE = None  # one text a line; None: the built-in sentences below
SEQ_LEN = 32
LABELS_FILE = None  # classify: one label (index or name) a line, for each line of TEXTS_FILE
# --- end of settings ---

BUILT_IN_TEXTS = [
    f"{subject} {verb} {thing} {when}"
    for subject, when in [("The committee", "yesterday."), ("My neighbour", "after a long debate."),
                          ("A young engineer", "despite the protests."), ("The city council", "on Monday morning.")]
    for verb in ["announced", "questioned", "rebuilt", "described"]
    for thing in ["a plan for cheaper trains", "the results of the survey", "its oldest bridge",
                  "a report on river pollution"]
]


@functools.cache
def texts() -> list[str]:
    if TEXTS_FILE is None:
        return BUILT_IN_TEXTS
    return [line.strip() for line in Path(TEXTS_FILE).read_text().splitlines() if line.strip()]


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


def tokens(lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer()(lines, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


class Served(nn.Module):
    """The model as served: logits for the classifiers, pooled embeddings for an encoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if TASK != "encode":
            return out.logits
        hidden = out.last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)


def build_model() -> nn.Module:
    import transformers

    auto = {"encode": transformers.AutoModel, "classify": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification}[TASK]
    return Served(auto.from_pretrained(MODEL_DIR, local_files_only=True)).eval()


@functools.cache
def metric_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    return tokens(texts()[0::2])


def make_inputs(batch_size: int):
    ids, mask = metric_tokens()
    rows = torch.arange(batch_size) % len(ids)
    return ids[rows].contiguous(), mask[rows].contiguous()


def calibration_data():
    ids, mask = tokens(texts()[1::2] or texts())
    return [(ids[i : i + 16], mask[i : i + 16]) for i in range(0, len(ids), 16)]


def outputs(predict) -> torch.Tensor:
    ids, mask = metric_tokens()
    return torch.cat([predict(ids[i : i + 32], mask[i : i + 32]).float() for i in range(0, len(ids), 32)])


@functools.cache
def expected() -> torch.Tensor:
    with torch.inference_mode():
        return outputs(build_model())


@functools.cache
def true_labels() -> torch.Tensor:
    names = build_model().model.config.label2id
    lines = [line.strip() for line in Path(LABELS_FILE).read_text().splitlines() if line.strip()]
    return torch.tensor([int(x) if x.lstrip("-").isdigit() else names[x] for x in lines[0::2]])


def evaluate(predict) -> float:
    got = outputs(predict)
    if TASK == "encode":
        return float(nn.functional.cosine_similarity(got, expected(), dim=-1).mean())
    if TASK == "classify":
        truth = true_labels() if LABELS_FILE else expected().argmax(-1)
        return float((got.argmax(-1) == truth).float().mean())
    real = metric_tokens()[1].bool()
    return float((got.argmax(-1) == expected().argmax(-1))[real].float().mean())


PIPELINE = autoopt.Pipeline(name=NAME, build_model=build_model, make_inputs=make_inputs, evaluate=evaluate,
                            calibration_data=calibration_data, padding_mask="attention_mask")
