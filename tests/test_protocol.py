"""The trial protocol survives JSON both ways, and a misspelt field fails at once."""

import json

import pytest

from autoopt.targets import Targets
from autoopt.trial.protocol import InferRequest, TrialRequest, TrialResult
from autoopt.report.results import TrialState


def test_a_request_and_a_result_round_trip_through_json():
    request = InferRequest(device="cpu", threads=2, min_time_s=0.5, pipeline="p.py", config={"batch_size": 8},
                           known_numerics={"accuracy": 0.9}, targets=Targets(latency_ms=20.0), early_stop=True)
    assert TrialRequest.from_json(request.to_json()) == request
    assert request.for_trial(trial=3).trial == 3 and request.trial is None  # frozen: a new request
    result = TrialResult.pruned("latency: too slow", {"latency_ms_p95": 30.0}, {"compile_mode": "eager"})
    again = TrialResult.from_json(result.to_json())
    assert again == result and again.state is TrialState.PRUNED
    assert json.loads(TrialResult.failed("crashed: SIGSEGV").to_json())["state"] == "FAILED"


def test_an_unknown_field_is_an_error_not_a_silent_default():
    with pytest.raises(TypeError, match="min_time"):
        TrialRequest.from_json(json.dumps({"task": "infer", "device": "cpu", "threads": 1, "min_time": 1.0}))


def test_each_task_has_its_own_request_and_another_task_takes_only_the_shared_fields():
    from autoopt.trial.protocol import RemeasureRequest, ServeRequest, TrainRequest

    infer = InferRequest(device="cpu", threads=2, min_time_s=0.5, pipeline="p.py", accuracy_floor=0.8,
                         targets=Targets(latency_ms=20.0), early_stop=True, screen_throughput=10.0)
    again = infer.for_trial(task="remeasure", configs=[{"batch_size": 8}], rounds=4)
    assert isinstance(again, RemeasureRequest) and again.task == "remeasure" and again.accuracy_floor == 0.8
    assert again.pipeline == "p.py" and not hasattr(again, "screen_throughput") and not hasattr(again, "targets")
    for request in (again, infer.for_trial(task="serve", config={"batch_size": 4}),
                    TrainRequest(device="cpu", threads=1, min_time_s=0.1, reference_numerics={"losses": [1.0]})):
        assert TrialRequest.from_json(request.to_json()) == request
    assert type(TrialRequest.from_json(infer.for_trial(task="serve").to_json())) is ServeRequest
    with pytest.raises(TypeError, match="unexpected keyword argument 'configs'"):
        infer.for_trial(configs=[])  # an inference trial has one configuration
