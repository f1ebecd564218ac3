"""The bundled default pipeline: a small CNN on scikit-learn's digits, upsampled to 32x32.

The 8x8 digits are upsampled so that the model does enough work per sample for optimization to
matter (eager fp32 at batch 64 takes tens of milliseconds on 2 cores). The model trains itself on
first use (about 20 s on 2 cores) and caches its weights in autoopt's cache directory, outside the
repository; later runs load them with ``weights_only=True``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import autoopt

IMAGE_SIZE = 32
EPOCHS = 8
SEED = 0
# Bump when the architecture or training recipe changes, so stale cached weights are not loaded.
WEIGHTS_VERSION = 1


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@functools.cache
def _splits() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def _train() -> DigitsCNN:
    torch.manual_seed(SEED)
    data = _splits()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    n = len(data["x_train"])
    steps = EPOCHS * ((n + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(n).split(64):
            loss = F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def build_model() -> nn.Module:
    model = DigitsCNN()
    model.load_state_dict(autoopt.cached_state_dict(f"digits_cnn-v{WEIGHTS_VERSION}", _train))
    return model.eval()


def make_inputs(batch_size: int) -> tuple[torch.Tensor, ...]:
    x = _splits()["x_train"]
    idx = torch.arange(batch_size) % len(x)
    return (x[idx].contiguous(),)


def evaluate(predict) -> float:
    data = _splits()
    correct = 0
    with torch.inference_mode():
        for xb, yb in zip(data["x_test"].split(64), data["y_test"].split(64)):
            correct += int((predict(xb).argmax(dim=1) == yb).sum())
    return correct / len(data["y_test"])


def calibration_data():
    x = _splits()["x_train"]
    return [(x[i : i + 32],) for i in range(0, 16 * 32, 32)]


def distill_data():
    """The training images without their labels: what a pruned model is distilled on (distill_steps)."""
    x = _splits()["x_train"]
    return [(x[i : i + 64],) for i in range(0, len(x), 64)]


PIPELINE = autoopt.Pipeline(
    name="digits_cnn",
    build_model=build_model,
    make_inputs=make_inputs,
    evaluate=evaluate,
    calibration_data=calibration_data,
    distill_data=distill_data,
)
