"""The bundled transformer pipeline: dict outputs, attention mask, trains on first use."""

import pytest
import torch

from autoopt.trial.accuracy import reference_accuracy
from autoopt.pipeline import check_pipeline, load_pipeline


@pytest.mark.slow
def test_text_transformer_trains_and_returns_a_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    pipe = load_pipeline("text_transformer")
    check_pipeline(pipe)  # trains here
    ids, mask = pipe.make_inputs(4)
    assert ids.dtype == torch.long and mask.shape == ids.shape
    out = pipe.build_model()(ids, mask)
    assert set(out) == {"logits", "pooled"} and out["logits"].shape == (4, 4)
    assert reference_accuracy(pipe) >= 0.85
    assert len(list((tmp_path / "weights").glob("text_transformer-*.pt"))) == 1
