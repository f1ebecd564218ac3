"""A bundled OCR pipeline: a small CRNN reads strings of scikit-learn digits (conv blocks, a
bidirectional LSTM, CTC).

Each sample is a line of 3 to 6 handwritten digits (8x8 scikit-learn images, upsampled to 16x16,
placed side by side on a 16 x 96 canvas, the rest left blank). The model is the classic CRNN: three
conv blocks turn the image into 24 columns of features, a bidirectional LSTM reads the columns, and a
linear layer gives per-column scores over the 10 digits and the CTC blank. The metric is sequence
accuracy: the share of held-out lines whose greedy CTC transcription is exactly right.

It is the bundled model where int8 is not all or nothing: the convolutions tolerate int8, and a
recurrent layer is where int8 usually hurts (the `int8_layers` knob keeps the fragile layers in
float). The model trains on first use (about a minute on 2 cores) and caches its weights in autoopt's
cache directory, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import autoopt

HEIGHT, WIDTH, DIGIT = 16, 96, 16  # canvas and the side of one upsampled digit
MIN_DIGITS, MAX_DIGITS = 3, 6
BLANK = 10  # the CTC blank class; classes 0-9 are the digits
HIDDEN = 96
SEED, STEPS, TRAIN_BATCH = 0, 700, 32
WEIGHTS_VERSION = 1  # bump when the architecture, data or recipe changes


class CRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, pool) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(pool)]

        self.features = nn.Sequential(*block(1, 32, 2), *block(32, 64, 2), *block(64, 128, (4, 1)))  # -> 128 x 1 x 24
        self.rnn = nn.LSTM(128, HIDDEN, batch_first=True, bidirectional=True)
        self.classifier = nn.Linear(2 * HIDDEN, BLANK + 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        columns = self.features(images).squeeze(2).transpose(1, 2)  # (batch, 24 columns, 128)
        sequence, _ = self.rnn(columns)
        return self.classifier(sequence)  # (batch, columns, classes): CTC scores per column


@functools.cache
def _digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False).squeeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def lines(n: int, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (n, 1, 16, 96), targets (n, MAX_DIGITS) padded with -1, lengths): n lines of digits."""
    x, y = _digits()[split]
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, HEIGHT, WIDTH)
    targets = torch.full((n, MAX_DIGITS), -1, dtype=torch.long)
    lengths = torch.randint(MIN_DIGITS, MAX_DIGITS + 1, (n,), generator=g)
    for i in range(n):
        picks = torch.randint(0, len(x), (int(lengths[i]),), generator=g)
        images[i, 0, :, : DIGIT * len(picks)] = torch.cat(list(x[picks]), dim=1)
        targets[i, : len(picks)] = y[picks]
    return (images - 0.5) / 0.5, targets, lengths


def decode(scores: torch.Tensor) -> list[list[int]]:
    """Greedy CTC: the best class per column, repeats merged, blanks dropped."""
    best = scores.argmax(dim=-1)
    out = []
    for row in best.tolist():
        text, previous = [], BLANK
        for c in row:
            if c != previous and c != BLANK:
                text.append(c)
            previous = c
        out.append(text)
    return out


def _train() -> CRNN:
    torch.manual_seed(SEED)
    model = CRNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=STEPS)
    images, targets, lengths = lines(STEPS * TRAIN_BATCH, "train", seed=SEED)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    model.train()
    for step in range(STEPS):
        part = slice(step * TRAIN_BATCH, (step + 1) * TRAIN_BATCH)
        log_probs = model(images[part]).log_softmax(-1).transpose(0, 1)  # (columns, batch, classes)
        flat = targets[part][targets[part] >= 0]
        loss = ctc(log_probs, flat, torch.full((TRAIN_BATCH,), log_probs.shape[0]), lengths[part])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@functools.cache
def _heldout():
    return lines(512, "test", seed=SEED + 1)


def build_model() -> nn.Module:
    model = CRNN()
    model.load_state_dict(autoopt.cached_state_dict(f"digits_ocr-v{WEIGHTS_VERSION}", _train))
    return model.eval()


def make_inputs(batch_size: int) -> tuple[torch.Tensor, ...]:
    images = _heldout()[0]
    idx = torch.arange(batch_size) % len(images)
    return (images[idx].contiguous(),)


def evaluate(predict) -> float:
    """Sequence accuracy: the share of held-out lines transcribed exactly."""
    images, targets, lengths = _heldout()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            texts = decode(predict(images[start : start + 64]))
            for text, target, n in zip(texts, targets[start : start + 64], lengths[start : start + 64]):
                right += text == target[: int(n)].tolist()
    return right / len(images)


def calibration_data():
    images = lines(16 * 32, "train", seed=SEED + 2)[0]
    return [(images[i : i + 32],) for i in range(0, len(images), 32)]


def distill_data():
    images = lines(2048, "train", seed=SEED + 3)[0]
    return [(images[i : i + 64],) for i in range(0, len(images), 64)]


PIPELINE = autoopt.Pipeline(
    name="digits_ocr",
    build_model=build_model,
    make_inputs=make_inputs,
    evaluate=evaluate,
    calibration_data=calibration_data,
    distill_data=distill_data,
)
