"""The trial protocol survives JSON both ways, and a misspelt field fails at once."""

import json

import pytest

from autoopt.trial.protocol import TrialRequest, TrialResult
from autoopt.report.results import TrialState


def test_a_request_and_a_result_round_trip_through_json():
    request = TrialRequest(task="infer", device="cpu", threads=2, min_time_s=0.5, pipeline="p.py",
                           config={"batch_size": 8}, known_numerics={"accuracy": 0.9}, latency_limit_ms=20.0)
    assert TrialRequest.from_json(request.to_json()) == request
    assert request.for_trial(trial=3).trial == 3 and request.trial is None  # frozen: a new request
    result = TrialResult.pruned("latency: too slow", {"latency_ms_p95": 30.0}, {"compile_mode": "eager"})
    again = TrialResult.from_json(result.to_json())
    assert again == result and again.state is TrialState.PRUNED
    assert json.loads(TrialResult.failed("crashed: SIGSEGV").to_json())["state"] == "FAILED"


def test_an_unknown_field_is_an_error_not_a_silent_default():
    with pytest.raises(TypeError, match="min_time"):
        TrialRequest.from_json(json.dumps({"task": "infer", "device": "cpu", "threads": 1, "min_time": 1.0}))
