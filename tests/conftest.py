from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TINY_MLP = str(TESTS / "pipelines" / "tiny_mlp.py")
TINY_DICT = str(TESTS / "pipelines" / "tiny_dict.py")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Pipelines cache weights here; tests never touch the user's cache.
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a developer's own setting would pick the store
    # The export verifier's re-timing is a figure for deployment, not a check: short blocks in tests.
    from autoopt.bundle import export as bundle

    monkeypatch.setattr(bundle, "VERIFY_TIMING_S", {"warmup_s": 0.05, "block_s": 0.1})


@pytest.fixture
def write_file(tmp_path):
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


# Short timing; no end-of-search re-measurement unless a test is about it (remeasure_top=3 there).
# No screening: which tiny-model trial a short timing puts below 70% of the best is the machine's noise
# (tests/test_worker.py and tests/test_api.py test screening where the outcome is certain).
FAST = {"min_time": "0.05s", "trial_timeout": "120s", "remeasure_top": 0, "screen": False}
