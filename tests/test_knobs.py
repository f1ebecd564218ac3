"""The shared knob suite runs on every registered knob; knob-specific tests follow."""

import pytest
import torch

from autoopt import knobs
from autoopt.knobs import REGISTRY

KNOB_NAMES = list(REGISTRY)


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("name", KNOB_NAMES)
def test_baseline_is_in_the_domain_and_available_on_cpu(name):
    knob = REGISTRY[name]
    assert knob.contains(knob.baseline)
    assert knob.unavailable(knob.baseline, "cpu") is None
    assert knob.doc


@pytest.mark.parametrize("name", KNOB_NAMES)
def test_baseline_apply_keeps_the_model_outputs(name):
    knob = REGISTRY[name]
    model, x = tiny_model(), torch.randn(4, 8)
    expected = model(x)
    if knob.apply is not None:
        model = knob.apply(model, knob.baseline, "cpu")
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("name", [n for n in KNOB_NAMES if REGISTRY[n].choices])
def test_every_available_choice_applies_and_runs(name):
    knob = REGISTRY[name]
    for value in knob.choices:
        if knob.unavailable(value, "cpu") or knob.apply is None:
            continue
        model = knob.apply(tiny_model(), value, "cpu")
        dtype = next(model.parameters()).dtype
        assert model(torch.randn(2, 8, dtype=dtype)).shape == (2, 2)


def test_reference_config_is_every_baseline():
    assert knobs.reference_config() == {"precision": "fp32", "batch_size": 1, "compile_mode": "eager"}
    assert knobs.conflict(knobs.reference_config(), "cpu") is None


def test_precision_fp16_is_cuda_only_and_bf16_casts():
    assert "CUDA" in REGISTRY["precision"].unavailable("fp16", "cpu")
    model = REGISTRY["precision"].apply(tiny_model(), "bf16", "cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_onnxruntime_with_bf16_is_a_conflict():
    reason = knobs.conflict({"precision": "bf16", "batch_size": 1, "compile_mode": "onnxruntime"}, "cpu")
    assert "onnxruntime runs the fp32 export" in reason


def test_batch_size_domain():
    knob = REGISTRY["batch_size"]
    assert knob.contains(64) and not knob.contains(0) and not knob.contains(2.5) and not knob.contains(True)


@pytest.mark.gpu
def test_fp16_on_cuda():
    assert REGISTRY["precision"].unavailable("fp16", "cuda") is None
    model = REGISTRY["precision"].apply(tiny_model().cuda(), "fp16", "cuda")
    assert model(torch.randn(2, 8, device="cuda", dtype=torch.float16)).dtype == torch.float16
