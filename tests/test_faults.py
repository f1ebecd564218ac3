"""Fault injection: searches over models that crash, raise, hang or hog memory for specific knob
values or trials; parallel jobs on one study."""

import pytest
from mlflow.tracking import MlflowClient

import autoopt

# Faults at batch sizes the pipeline check (batch 2, in the test process) never runs.
FAULTY = """
import os, time, torch, autoopt

class Faulty(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 3:
            os.abort()                      # a crash in native code (SIGABRT)
        if x.shape[0] == 4:
            raise ValueError("kernel rejected batch 4")
        if x.shape[0] == 8:
            time.sleep(600)                 # a hang
        if x.shape[0] == 12:
            return x * 2 + torch.ones(64, 1024, 1024).sum()   # 256 MB more than the target allows
        return x * 2

PIPELINE = autoopt.Pipeline("faulty", Faulty, lambda b: (torch.randn(b, 3),))
"""

# One crash per 5 trials: trials 4, 9, 14, ... abort while building (AUTOOPT_TRIAL is set by the worker).
EVERY_FIFTH = """
import os, torch, autoopt

def build_model():
    if os.environ.get("AUTOOPT_TRIAL") and int(os.environ["AUTOOPT_TRIAL"]) % 5 == 4:
        os.abort()
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()

PIPELINE = autoopt.Pipeline("every_fifth", build_model, lambda b: (torch.randn(b, 8),))
"""


@pytest.mark.slow
def test_crash_exception_hang_and_memory_hog_end_their_trials_and_the_search_goes_on(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY)
    space = write_file("space.yaml", "batch_size: [1, 3, 4, 8, 12, 16]\n")
    result = autoopt.search(path, space=space, trials=6, seed=0, tracking_uri=str(tmp_path), min_time="0.05s",
                            trial_timeout="15s", target_memory="200MB", memory_basis="growth", screen=False)
    by_batch = {t.config["batch_size"]: t for t in result.trials}
    assert sorted(by_batch) == [1, 3, 4, 8, 12, 16]  # every configuration once: none retried
    assert by_batch[3].state == "FAILED" and by_batch[3].reason == "crashed: SIGABRT"
    assert by_batch[4].state == "FAILED" and by_batch[4].reason == "ValueError: kernel rejected batch 4"
    assert by_batch[8].state == "FAILED" and by_batch[8].reason == "timeout: no result after 15 s"
    assert by_batch[12].state == "PRUNED" and by_batch[12].reason.startswith("memory: peak ")
    assert by_batch[1].state == by_batch[16].state == "COMPLETE"
    assert result.best is not None and result.best.config["batch_size"] in (1, 16)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([result.experiment_id], "tags.`autoopt.role` = 'trial'")
    reasons = {r.data.tags["autoopt.trial"]: (r.info.status, r.data.tags.get("autoopt.reason")) for r in runs}
    assert reasons[str(by_batch[3].number)] == ("FAILED", "crashed: SIGABRT")
    assert reasons[str(by_batch[12].number)][0] == "KILLED" and reasons[str(by_batch[12].number)][1].startswith("memory")


@pytest.mark.slow
def test_thirty_trials_with_one_crash_per_five_end_with_24_complete(tmp_path, write_file):
    path = write_file("every_fifth.py", EVERY_FIFTH)
    space = write_file("space.yaml", "batch_size: [1, 2, 4, 8, 16, 32, 64, 128]\nthreads: [1, 2]\n"
                                     "compile_mode: [eager, torchscript]\n")
    result = autoopt.search(path, space=space, trials=30, seed=0, tracking_uri=str(tmp_path), min_time="0.02s",
                            screen=False)  # every trial timed fully: a crash is the only way one ends otherwise
    states = [t.state for t in result.trials]
    assert len(states) == 30 and states.count("COMPLETE") == 24, states
    assert [t.number for t in result.trials if t.state == "FAILED"] == [4, 9, 14, 19, 24, 29]
    assert all(t.reason == "crashed: SIGABRT" for t in result.trials if t.state == "FAILED")


@pytest.mark.slow
def test_two_jobs_share_one_study_with_unique_trials_and_one_run_each(tmp_path, write_file):
    path = write_file("every_fifth.py", EVERY_FIFTH.replace("% 5 == 4", "% 1000 == 999"))
    space = write_file("space.yaml", "batch_size: [1, 2, 4, 8, 16, 32]\ncompile_mode: [eager, torchscript]\n")
    result = autoopt.search(path, space=space, trials=8, seed=0, tracking_uri=str(tmp_path), min_time="0.05s",
                            jobs=2, study="two-jobs", screen=False)
    numbers = [t.number for t in result.trials]
    assert sorted(numbers) == list(range(8)) and all(t.state == "COMPLETE" for t in result.trials)
    configs = [tuple(sorted(t.config.items())) for t in result.trials]
    assert len(set(configs)) == 8  # running trials count as seen: no configuration measured twice
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([result.experiment_id], "tags.`autoopt.role` = 'trial'")
    assert sorted(int(r.data.tags["autoopt.trial"]) for r in runs) == list(range(8))
    assert {r.info.status for r in runs} == {"FINISHED"}
    # Both workers were busy at once: some trials overlap in time.
    spans = sorted((t.datetime_start, t.datetime_complete) for t in result.study.trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
