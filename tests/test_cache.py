"""The caches: keyed, bounded, safe to delete."""

import os
import shutil
import time

import torch

import autoopt
from autoopt.cache import ArtifactCache, cache_dir, model_fingerprint


def test_cached_state_dict_trains_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        return torch.nn.Linear(2, 2)

    first = autoopt.cached_state_dict("lin-v1", train)
    again = autoopt.cached_state_dict("lin-v1", train)
    assert len(calls) == 1 and torch.equal(first["weight"], again["weight"])
    assert os.listdir(tmp_path / "weights") == ["lin-v1.pt"]  # no temporary file left behind


def test_fingerprint_changes_with_weights_and_knobs():
    model, x = torch.nn.Linear(3, 2), (torch.randn(2, 3),)
    key = model_fingerprint(model, x, quantization="none")
    assert key == model_fingerprint(model, (torch.randn(7, 3),), quantization="none")  # batch size does not count
    assert key != model_fingerprint(model, x, quantization="dynamic_int8")
    with torch.no_grad():
        model.weight.add_(1)
    assert key != model_fingerprint(model, x, quantization="none")


def test_artifact_cache_is_bounded_lru_and_safe_to_delete(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 400_000)
    cache = ArtifactCache("art", max_mb=1.0)
    for key in ("a", "b"):
        cache.put(key, {"model.onnx": str(blob)})
        time.sleep(0.01)
    assert cache.get("a") is not None  # a is now the most recently used
    time.sleep(0.01)
    cache.put("c", {"model.onnx": str(blob)})  # 1.2 MB > 1 MB: the least recently used (b) goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.size_mb() <= 1.0
    shutil.rmtree(cache_dir("art"))
    assert ArtifactCache("art").get("a") is None  # deleting the cache only costs a rebuild


def test_fingerprint_of_int8_models_follows_their_integer_weights():
    def int8(seed: int, shift: float = 0.0):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        with torch.no_grad():
            model[0].weight.add_(shift)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    x = (torch.randn(2, 64),)
    key = model_fingerprint(int8(0), x)
    assert key == model_fingerprint(int8(0), x)  # the same weights: the same key, not an address
    assert key != model_fingerprint(int8(0, shift=0.5), x)
    assert key != model_fingerprint(int8(1), x)
    quantized = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
    assert model_fingerprint(torch.nn.Identity(), x, w=1) == model_fingerprint(torch.nn.Identity(), x, w=1)
    h1, h2 = __import__("hashlib").sha256(), __import__("hashlib").sha256()
    from autoopt.cache import _feed

    _feed(h1, "w", quantized)
    _feed(h2, "w", torch.quantize_per_tensor(quantized.dequantize(), 0.2, 0, torch.qint8))
    assert h1.digest() != h2.digest()  # same values, another scale
