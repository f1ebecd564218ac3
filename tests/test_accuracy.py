import pytest
import torch

from autoopt.trial.accuracy import candidate_accuracy, cosine_fidelity, reference_accuracy
from autoopt.pipeline import load_pipeline
from autoopt.runtimes.eager import predictor
from conftest import TINY_DICT, TINY_MLP


def test_cosine_fidelity():
    a = {"x": torch.randn(4, 3), "y": (torch.randn(4), torch.zeros(4, 2))}
    assert cosine_fidelity(a, a) == pytest.approx(1.0)
    neg = {"x": -a["x"], "y": (-a["y"][0], a["y"][1])}
    # x and y[0] flip sign (-1 per sample), zero outputs agree exactly (1 per sample)
    assert cosine_fidelity(neg, a) == pytest.approx(-1 / 3)
    assert cosine_fidelity(torch.randn(2, 3), torch.randn(3, 3)) == 0.0


def test_metric_mode_uses_evaluate():
    pipe = load_pipeline(TINY_MLP)
    assert reference_accuracy(pipe) == 1.0
    broken = predictor(torch.nn.Sequential(torch.nn.Linear(16, 4)).eval())
    assert candidate_accuracy(pipe, broken) < 0.9


def test_fidelity_mode_without_evaluate():
    pipe = load_pipeline(TINY_DICT)
    assert reference_accuracy(pipe) == 1.0
    assert candidate_accuracy(pipe, predictor(pipe.build_model())) == pytest.approx(1.0)
    model = pipe.build_model()
    with torch.no_grad():
        model.head.weight.add_(0.5 * torch.randn_like(model.head.weight))
    assert 0.3 < candidate_accuracy(pipe, predictor(model)) < 0.999
