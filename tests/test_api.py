"""End to end: a few trials on tiny pipelines into a temporary MLflow store."""

import pytest
from mlflow.tracking import MlflowClient

import autoopt
from conftest import FAST, TINY_DICT, TINY_MLP

TRIAL_METRICS = {"latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "throughput_samples_per_s", "peak_memory_mb",
                 "model_size_mb", "accuracy", "accuracy_drop"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlruns")
    result = autoopt.search(TINY_MLP, target_latency="1s", target_memory="2GB", max_accuracy_drop="20%", trials=4, seed=0,
                            study="e2e", tracking_uri=str(store), **{**FAST, "remeasure_top": 3})
    return result, store


def test_reference_is_trial_zero_and_a_best_is_found(searched):
    result, _ = searched
    assert len(result.trials) == 4
    ref = result.trials[0]
    assert ref.reference and ref.state == "COMPLETE"
    assert ref.config == autoopt.knobs.reference_config()
    assert ref.metrics["accuracy_drop"] == 0.0
    assert result.best is not None and result.best.feasible
    # The reference and the top 3 were re-timed interleaved; the winner is the fastest there, or won a tie with it.
    remeasured = result.study.user_attrs["remeasured"]
    assert "0" in remeasured and str(result.best.number) in remeasured and len(remeasured) <= 4
    fastest = max((t for t in result.top(5) if t.remeasured), key=lambda t: t.remeasured["throughput"])
    assert result.best is fastest or (result.tie.winner is result.best and result.tie.fastest is fastest)
    assert result.speedup(ref) == 1.0 and remeasured["0"]["rounds"] == 10
    assert set(result.study.trials[1].params) == set(ref.config)


def test_trials_dataframe_and_the_named_objective(searched):
    result, store = searched
    frame = result.trials_dataframe()
    assert list(frame.index) == [t.number for t in result.trials] and frame.loc[0, "reference"]
    assert {"state", "feasible", "batch_size", "compile_mode", "throughput", "latency_ms_p95", "accuracy_drop"} <= \
        set(frame.columns)
    best = result.best
    assert frame.loc[best.number, "feasible"] and frame.loc[best.number, "throughput"] == best.metrics["throughput"]
    assert frame.loc[best.number, "remeasured_throughput"] == best.remeasured["throughput"]
    assert result.study.metric_names == ["throughput"]  # optuna-dashboard shows the objective by name
    assert autoopt.trials(tracking_uri=str(store)).study_name == "e2e"  # the latest study


def test_every_trial_is_a_child_run_with_params_metrics_and_tags(searched):
    result, store = searched
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny_mlp")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("autoopt.role") == "study"]
    children = [r for r in runs if r.data.tags.get("autoopt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {"target_latency_ms", "max_accuracy_drop", "torch_version", "optuna_version", "onnxruntime_version",
            "device", "space", "pipeline"} <= set(parent.data.params)
    assert "best_throughput_samples_per_s" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.csv", "pareto_front.png", "trials.csv", "report.md", "optimization_history.png",
            "search.yaml"} <= artifacts
    assert ("param_importances.csv" in artifacts) == ("param_importances.png" in artifacts)
    # the study's options, as a config file that repeats the search
    logged = client.download_artifacts(parent.info.run_id, "search.yaml", str(store))
    again = autoopt.plan(config=logged)
    assert (again.pipeline, again.trials, again.targets["latency_ms"], again.targets["max_accuracy_drop"]) == \
        ("tiny_mlp", 4, 1000.0, 0.2)
    report = open(client.download_artifacts(parent.info.run_id, "report.md", str(store))).read()
    assert f"## Winner\n\ntrial {result.best.number} (" in report and "## How noisy the machine was" in report
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["autoopt.study"] == "e2e"
        number = int(tags["autoopt.trial"])
        trial = result.trials[number]
        assert run.data.params == {k: str(v) for k, v in trial.config.items()}
        assert tags["autoopt.state"] == trial.state
        if trial.state == "COMPLETE":
            assert TRIAL_METRICS <= set(run.data.metrics)
            assert tags["autoopt.feasible"] == str(trial.feasible).lower()
            assert run.info.status == "FINISHED"
        else:
            assert tags["autoopt.reason"]


def test_the_winner_run_is_tagged_and_carries_the_re_measured_figures_the_search_reports(searched):
    result, store = searched
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    winners = [r for r in runs if r.data.tags.get("autoopt.winner") == "true"]
    assert [int(r.data.tags["autoopt.trial"]) for r in winners] == [result.best.number]
    assert winners[0].data.metrics["remeasured_throughput_samples_per_s"] == result.best.remeasured["throughput"]
    assert result.best.figures["throughput"] == result.best.remeasured["throughput"]  # what the CLI prints
    (parent,) = [r for r in runs if r.data.tags.get("autoopt.role") == "study"]
    assert parent.data.metrics["best_throughput_samples_per_s"] == result.best.remeasured["throughput"]
    assert parent.data.tags["autoopt.best_figures"] == "re-measured interleaved"
    remeasured = {int(r.data.tags["autoopt.trial"]) for r in runs if "remeasured_throughput_samples_per_s" in r.data.metrics}
    assert remeasured == {int(n) for n in result.study.user_attrs["remeasured"]}


def test_same_study_name_resumes_and_counts_earlier_trials(searched):
    result, store = searched
    again = autoopt.search(TINY_MLP, target_latency="1s", target_memory="2GB", max_accuracy_drop="20%", trials=5, seed=0,
                           study="e2e", tracking_uri=str(store), **FAST)
    assert len(again.trials) == 5
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    assert sum(r.data.tags.get("autoopt.role") == "study" for r in runs) == 1
    assert sum(r.data.tags.get("autoopt.role") == "trial" for r in runs) == 5


@pytest.mark.parametrize("change, message", [
    ({"target_latency": "20ms"}, "Study e2e was searched with target_latency='1ms'; this run asks for target_latency='20ms': "
                                 "its trials' feasibility was judged against the old targets."),
    ({"target_memory": None}, "Study e2e was searched with target_memory='2000MB'; this run asks for no target_memory:"),
    ({"max_accuracy_drop": "1%"}, "Study e2e was searched with max_accuracy_drop='0.2'; this run asks for max_accuracy_drop='0.01'"),
    ({"export": "onnx"}, "Study e2e searched compile_mode in [eager]; this run gives [eager, onnxruntime] (from "),
    ({"space": "cpu"}, "Study e2e searched batch_size in [1, 4]; this run gives 1..256, log (from "),
])
def test_resuming_with_other_targets_or_another_space_is_refused_and_writes_nothing(tmp_path, write_file, change, message):
    space = write_file("space.yaml", "batch_size: [1, 4]\n")
    options = {"target_latency": "1ms", "target_memory": "2GB", "max_accuracy_drop": "20%", "space": space, "seed": 0,
               "study": "e2e", "tracking_uri": str(tmp_path), **FAST}
    autoopt.search(TINY_MLP, trials=1, **options)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    before = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    with pytest.raises(autoopt.ConfigError) as info:
        autoopt.search(TINY_MLP, trials=2, **{**options, **change})
    assert message in str(info.value)
    assert str(info.value).endswith("Resume it with the same settings, or start a new study with study='NEW_NAME'.")
    after = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in after] == [(r.info.run_id, r.info.status) for r in before]


def test_an_error_during_a_search_closes_every_run_as_failed(tmp_path, write_file, monkeypatch):
    from autoopt.study.runner import Runner

    def broken(self, trials):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(Runner, "remeasure", broken)
    space = write_file("space.yaml", "batch_size: [1, 4]\n")
    with pytest.raises(RuntimeError, match="the disk is full"):
        autoopt.search(TINY_MLP, space=space, trials=2, seed=0, tracking_uri=str(tmp_path), **{**FAST, "remeasure_top": 1})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("autoopt.role") == "study"]
    assert parent.info.status == "FAILED" and parent.data.tags["autoopt.error"] == "RuntimeError: the disk is full"
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"} and len(runs) == 3


def test_fidelity_pipeline_and_an_in_memory_pipeline(tmp_path, write_file):
    pipe = autoopt.load_pipeline(TINY_DICT)
    in_memory = autoopt.Pipeline("in_memory", pipe.build_model, pipe.make_inputs)  # no source file
    space = write_file("space.yaml", "batch_size: [1, 4]\ncompile_mode: [eager, onnxruntime]\n")
    result = autoopt.search(in_memory, space=space, trials=2, seed=1, tracking_uri=str(tmp_path), **FAST)
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"]
    assert result.reference_accuracy == 1.0
    assert result.trials[0].metrics["accuracy"] == pytest.approx(1.0)


def test_unreachable_target_gives_no_best_and_a_closest_trial(tmp_path, write_file):
    space = write_file("space.yaml", "batch_size: [1, 4]\n")  # only latency can be violated
    result = autoopt.search(TINY_MLP, target_latency="1us", space=space, trials=2, seed=0,
                            tracking_uri=str(tmp_path), **FAST)
    assert result.best is None
    closest = result.closest
    assert closest is not None
    (message,) = result.violations(closest)
    assert message.startswith("latency p95 ") and "is over the 0.001 ms target by" in message
    assert all(t.state == "PRUNED" and t.reason.startswith("latency") for t in result.trials)


SLOW_AT_8 = """
import time, torch, autoopt

class SlowAt8(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 8:
            time.sleep(0.05)  # 160 samples/s, against tens of thousands at batch 1
        return x * 2

PIPELINE = autoopt.Pipeline("slow_at_8", SlowAt8, lambda b: (torch.randn(b, 3),))
"""


def test_a_trial_far_below_the_best_is_screened_out_and_reported_so(tmp_path, write_file):
    pipeline, space = write_file("slow.py", SLOW_AT_8), write_file("space.yaml", "batch_size: [1, 8]\n")
    result = autoopt.search(pipeline, space=space, trials=2, seed=0, tracking_uri=str(tmp_path / "store"),
                            **{**FAST, "screen": True})
    reference, screened = result.trials
    assert reference.state == "COMPLETE" and "screen_throughput" not in reference.metrics  # timed fully
    assert screened.config["batch_size"] == 8 and screened.state == "PRUNED"
    assert screened.reason.startswith("screened out: about ") and screened.metrics["screen_throughput"] < 200
    assert result.best.number == 0


def test_without_early_stop_a_trial_over_the_latency_target_is_measured_fully(tmp_path, write_file):
    space = write_file("space.yaml", "batch_size: [1, 4]\n")
    result = autoopt.search(TINY_MLP, target_latency="1us", space=space, trials=2, seed=0, early_stop=False,
                            tracking_uri=str(tmp_path), **FAST)
    assert result.best is None and len(result.trials) == 2
    for trial in result.trials:  # complete, infeasible, and its accuracy checked
        assert trial.state == "COMPLETE" and trial.constraints["latency"] > 0 and "accuracy" in trial.metrics


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(autoopt.ConfigError, match="target_latency has unknown unit 'parsecs'"):
        autoopt.search(TINY_MLP, target_latency="100 parsecs", tracking_uri=str(tmp_path))
    with pytest.raises(autoopt.ConfigError, match="trials must be a whole number of at least 1. Got 0."):
        autoopt.search(TINY_MLP, trials=0, tracking_uri=str(tmp_path))
    with pytest.raises(autoopt.ConfigError, match="study must be a name of letters"):
        autoopt.search(TINY_MLP, study="it's mine", tracking_uri=str(tmp_path))
    with pytest.raises(autoopt.ConfigError, match=r"device must be one of \[auto, cpu, cuda\]. Got 'tpu'."):
        autoopt.search(TINY_MLP, device="tpu", tracking_uri=str(tmp_path))
    with pytest.raises(autoopt.ConfigError, match=r"sampler must be one of \[tpe, gp, random, grid\]. Got 'cmaes'."):
        autoopt.search(TINY_MLP, sampler="cmaes", tracking_uri=str(tmp_path))
    with pytest.raises(autoopt.ConfigError, match="jobs must be a whole number of at least 1. Got 0."):
        autoopt.search(TINY_MLP, jobs=0, tracking_uri=str(tmp_path))


def test_unusable_storages_are_config_errors(tmp_path, monkeypatch):
    from autoopt.study import storage

    with pytest.raises(autoopt.ConfigError, match=r"storage='postgresql://nobody@127.0.0.1:1/x': cannot open it "
                                                  r"\(OperationalError: "):
        autoopt.search(TINY_MLP, storage="postgresql://nobody@127.0.0.1:1/x", tracking_uri=str(tmp_path))
    monkeypatch.setattr(storage, "_postgres_driver_installed", lambda: False)
    with pytest.raises(autoopt.ConfigError, match=r"needs a PostgreSQL driver, and none is installed. "
                                                  r"Fix: pip install 'psycopg\[binary\]'."):
        autoopt.search(TINY_MLP, storage="postgresql://h/db", tracking_uri=str(tmp_path))


CONV_ONLY = """
import torch, autoopt

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.ReLU()).eval()

PIPELINE = autoopt.Pipeline("conv_only", build, lambda b: (torch.randn(b, 2, 8),))
"""


def test_a_build_time_failure_costs_one_pruned_trial(tmp_path, write_file):
    pipeline = write_file("conv_only.py", CONV_ONLY)
    space = write_file("space.yaml", "quantization: [none, dynamic_int8]\nbatch_size: [1, 2, 4]\n")
    # 6 combinations, 3 with dynamic_int8: the reference, one pruned build, then the 2 other plain ones
    result = autoopt.search(pipeline, space=space, trials=4, seed=0, tracking_uri=str(tmp_path / "store"), **FAST)
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert len(pruned) == 1 and "this model has none" in pruned[0].reason
    assert result.study.trials[pruned[0].number].user_attrs["pruned_scope"] == {
        "quantization": "dynamic_int8", "compile_mode": "eager"}
    assert all(t.config["quantization"] == "none" for t in result.trials if t.state == "COMPLETE")


def test_the_grid_sampler_visits_every_combination_once(tmp_path, write_file):
    space = write_file("space.yaml", "batch_size: [1, 2, 4]\ncompile_mode: [eager, torchscript]\n")
    result = autoopt.search(TINY_MLP, space=space, sampler="grid", trials=7, seed=0, tracking_uri=str(tmp_path),
                            **FAST)
    seen = {(t.config["batch_size"], t.config["compile_mode"]) for t in result.trials}
    assert len(seen) == 6 and sum(t.reused_from is not None for t in result.trials) == 1  # the reference, again
    ranged = write_file("ranged.yaml", "batch_size: {low: 1, high: 8}\n")
    with pytest.raises(autoopt.ConfigError, match="sampler='grid' needs list domains; .* gives batch_size a range"):
        autoopt.search(TINY_MLP, space=ranged, sampler="grid", tracking_uri=str(tmp_path))


def test_a_reference_that_differs_scores_the_metric_and_the_export_follows_build_model(tmp_path, write_file):
    from conftest import TESTS

    pipeline = str(TESTS / "pipelines" / "with_reference.py")
    space = write_file("space.yaml", "batch_size: [1, 4]\n")
    result = autoopt.search(pipeline, space=space, trials=2, seed=0, max_accuracy_drop="100%", export="onnx",
                            out=str(tmp_path / "bundle"), tracking_uri=str(tmp_path / "ml"), **FAST)
    assert result.reference_accuracy == 1.0  # the teacher agrees with itself
    assert result.trials[0].metrics["accuracy"] < 0.9  # the student, judged by the teacher
    manifest = result.exported.manifest
    assert manifest["verification"]["max_abs_error"] < 1e-3  # against build_model, not the teacher
    student = autoopt.load(tmp_path / "bundle")
    x = autoopt.load_pipeline(pipeline).make_inputs(3)
    import torch

    with torch.inference_mode():
        torch.testing.assert_close(student(*x), autoopt.load_pipeline(pipeline).build_model()(*x), atol=1e-4, rtol=1e-4)
