"""Serving memory (serving_rss_mb): measured in a fresh process per candidate, bounded by --target-memory by default."""

import pytest

import autoopt
from autoopt.cli import main
from autoopt.report.results import TrialState
from conftest import FAST, TINY_MLP

SPACE = "batch_size: [16]\ncompile_mode: [torchscript, onnxruntime]\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A search with no memory target, whose every complete trial is then measured serving (to pick a target)."""
    root = tmp_path_factory.mktemp("served")
    (root / "space.yaml").write_text(SPACE)
    return root


def test_a_target_under_the_torch_runtime_s_serving_memory_ships_the_runtime_without_torch(served):
    # TorchScript's process imports torch (hundreds of MB resident); ONNX Runtime's does not (tens): 180 MB
    # sits between them on every machine this has run on, with room both ways.
    result = autoopt.search(TINY_MLP, space=str(served / "space.yaml"), trials=3, seed=0, target_memory="180MB",
                            study="serving", tracking_uri=str(served / "store"), **FAST)
    assert result.targets.memory_basis == "serving"
    by_mode = {t.config["compile_mode"]: t for t in result.trials}
    reference, ts, ort = by_mode["eager"], by_mode["torchscript"], by_mode["onnxruntime"]
    # the reference completes whatever its memory (speedups need it), infeasible past the target
    assert reference.state == TrialState.COMPLETE and reference.metrics["serving_rss_mb"] > 180
    assert not reference.feasible and reference.constraints["memory"] > 0
    assert ts.state == TrialState.PRUNED and ts.metrics["serving_rss_mb"] > 180
    assert ts.reason.startswith("serving memory: a fresh process serving its bundle peaks at ")
    assert "MB resident, over the 180 MB target (accuracy not checked)" in ts.reason
    assert ort.feasible and 10 < ort.metrics["serving_rss_mb"] < 180
    assert result.best is ort
    assert "serving memory 2" not in result.targets.describe() and "serving memory <= 180 MB" in result.targets.describe()
    assert result.violations(reference)[0].startswith("serving memory ")


def test_the_growth_basis_is_what_a_warm_worker_gains_and_measures_no_fresh_process(served):
    result = autoopt.search(TINY_MLP, space=str(served / "space.yaml"), trials=2, seed=0, target_memory="180MB",
                            memory_basis="growth", study="growth", tracking_uri=str(served / "store"), **FAST)
    assert result.targets.memory_basis == "growth"
    assert all("serving_rss_mb" not in t.metrics for t in result.trials)
    assert all(t.feasible for t in result.trials)  # a few MB of growth each


def test_an_eager_candidate_is_served_in_python_through_autoopt(tmp_path):
    from autoopt.pipeline import load_pipeline
    from autoopt.trial.protocol import ServeRequest
    from autoopt.trial.serving import serve_in_python

    request = ServeRequest(device="cpu", threads=1, min_time_s=0.05, pipeline=TINY_MLP,
                           config={**autoopt.knobs.reference_config(), "batch_size": 4}, workdir=str(tmp_path))
    result = serve_in_python(load_pipeline(TINY_MLP), request)  # in this process: a floor, not the figure
    assert result.state == TrialState.COMPLETE and result.metrics["serving_via"] == "python"
    assert result.metrics["serving_rss_mb"] > 50  # the interpreter and torch at least


@pytest.mark.parametrize("argv, message", [
    (["--memory-basis", "disk"], "--memory-basis must be one of [serving, growth]. Got 'disk'."),
    (["--memory-basis", "serving", "--task", "train"],
     "--memory-basis serving is the resident memory of a CPU process serving a bundle; --task train measures a "
     "training step. Use --memory-basis growth."),
])
def test_memory_basis_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", TINY_MLP, *argv]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
