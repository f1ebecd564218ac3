"""Fault injection: a search over a model that crashes, raises and hangs for specific knob values."""

import pytest

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
        return x * 2

PIPELINE = autoopt.Pipeline("faulty", Faulty, lambda b: (torch.randn(b, 3),))
"""


@pytest.mark.slow
def test_crash_exception_and_hang_fail_their_trials_and_the_search_goes_on(tmp_path, write_file):
    path = write_file("faulty.py", FAULTY)
    space = write_file("space.yaml", "batch_size: [1, 3, 4, 8, 16]\n")
    result = autoopt.search(path, space=space, trials=5, seed=0, tracking_uri=str(tmp_path), min_time="0.05s",
                            trial_timeout="15s")
    by_batch = {t.config["batch_size"]: t for t in result.trials}
    assert sorted(by_batch) == [1, 3, 4, 8, 16]  # every configuration once: none retried
    assert by_batch[3].state == "FAILED" and by_batch[3].reason == "crashed: SIGABRT"
    assert by_batch[4].state == "FAILED" and by_batch[4].reason == "ValueError: kernel rejected batch 4"
    assert by_batch[8].state == "FAILED" and by_batch[8].reason == "timeout: no result after 15 s"
    assert by_batch[1].state == by_batch[16].state == "COMPLETE"
    assert result.best is not None and result.best.config["batch_size"] in (1, 16)
