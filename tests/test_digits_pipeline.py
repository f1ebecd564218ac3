"""The bundled default pipeline trains on first use, caches its weights outside the repo, and is accurate."""

import os

import pytest
import torch

from autoopt.trial.accuracy import reference_accuracy
from autoopt.pipeline import check_pipeline, load_pipeline


@pytest.mark.slow
def test_digits_cnn_trains_caches_and_reaches_95_percent(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    pipe = load_pipeline("digits_cnn")
    check_pipeline(pipe)  # trains here: no cached weights yet
    (weights,) = list((tmp_path / "weights").glob("digits_cnn-*.pt"))
    assert not str(weights).startswith(os.path.dirname(os.path.dirname(pipe.source)))
    torch.load(weights, weights_only=True)  # loadable without unpickling code
    mtime = weights.stat().st_mtime
    assert reference_accuracy(pipe) >= 0.95
    pipe.build_model()
    assert weights.stat().st_mtime == mtime  # second use loads, does not retrain
    assert pipe.make_inputs(64)[0].shape == (64, 1, 32, 32)
