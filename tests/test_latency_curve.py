"""The latency curve: batch sizes a family cannot meet the target at are not sampled for it."""

import pytest

from autoopt import knobs
from autoopt.study.latency_curve import LatencyCurves, family
from autoopt.trial.protocol import TrialResult
from autoopt.report.results import TrialRecord, TrialState

REF = knobs.reference_config()


def measured(number, p95_ms, **config):
    return TrialRecord(number, {**REF, **config}, TrialState.COMPLETE, metrics={"latency_ms_p95": p95_ms})


def test_a_batch_past_a_measured_overshoot_or_the_linear_extrapolation_is_ruled_out():
    onnx = {"compile_mode": "onnxruntime"}
    records = [measured(0, 2.0, batch_size=1),  # the reference: 2 ms a sample
               measured(1, 4.0, batch_size=16, threads=2, **onnx),  # 0.25 ms a sample
               measured(2, 30.0, batch_size=64, threads=1, **onnx)]  # over 1.25 x 20 ms at one thread
    curves = LatencyCurves(records, target_ms=20.0)
    bound, why = curves.largest_batch({**REF, **onnx, "threads": 1, "batch_size": 128})
    assert bound == 63 and "#2 measured p95 30.00 ms at batch 64" in why  # latency does not fall with batch
    bound, why = curves.largest_batch({**REF, **onnx, "threads": 2, "batch_size": 128})
    assert bound == 160 and "this family's fastest point, #1" in why  # 2 x 20 ms / 0.25 ms: 64 at 1 thread says nothing
    bound, why = curves.largest_batch({**REF, "compile_mode": "openvino", "batch_size": 128})
    assert bound == 160 and "the study's (this family is not measured yet)" in why
    assert curves.largest_batch({**REF, "batch_size": 4})[0] == 20  # the eager family: 2 ms a sample
    # knobs that change nothing do not split a family
    assert family({**REF, "quant_granularity": "per_tensor"}) == family({**REF, "batch_size": 64, "threads": 1})


def test_the_sampler_moves_a_batch_down_and_says_why():
    import optuna

    from autoopt.study.sampler import ValidConfigSampler

    curves = LatencyCurves([measured(0, 2.0, batch_size=1)], target_ms=20.0)  # 2 ms a sample: at most 20
    for distribution, expected in ((optuna.distributions.IntDistribution(1, 128, log=True), 20),
                                   (optuna.distributions.CategoricalDistribution([1, 8, 16, 32]), 16)):
        params, why = ValidConfigSampler._within_curve({**REF, "batch_size": 64}, curves, distribution)
        assert params["batch_size"] == expected
        assert why.startswith(f"batch_size 64 -> {expected}: this family's fastest point, #0 (2.000 ms a sample")
    assert ValidConfigSampler._within_curve({**REF, "batch_size": 8}, curves, distribution) == ({**REF, "batch_size": 8},
                                                                                                None)
    over = LatencyCurves([measured(0, 30.0, batch_size=1)], target_ms=20.0)  # over at the smallest batch
    assert ValidConfigSampler._within_curve({**REF, "batch_size": 8}, over, distribution) == (None, None)


def test_no_measurement_no_bound():
    assert LatencyCurves([], target_ms=20.0).largest_batch({**REF, "batch_size": 128}) == (None, None)


def fake_latency_ms(config: dict) -> float:
    """A timing model of a CPU: per-sample cost by runtime and int8, sublinear in batch size."""
    per_sample = {"eager": 4.0, "torchscript": 3.2, "inductor": 2.4, "onnxruntime": 1.6, "openvino": 1.0}
    ms = per_sample[config["compile_mode"]] * (0.5 if config["quantization"] != "none" else 1.0)
    ms *= 0.6 if config["precision"] == "bf16" else 1.0
    ms *= 1 - 0.6 * config["pruning_amount"]
    return 1.0 + ms * config["batch_size"] ** 0.95 * (1.4 if config["threads"] == 1 else 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_30_trial_search_spends_no_trial_on_a_batch_twice_over_the_target(seed):
    """Issue 17's measure on a fake timing model: a trial is wasted when its batch size times the fastest
    per-sample latency measured before it is more than twice the target (the issue allows 10%). The curve
    guarantees none: a family's bound comes from its own points, never faster than the study's fastest.
    (Without it, TPE spends 1-2 of these 30 trials so.)"""
    from autoopt.study.space import load_space
    from autoopt.study.loop import open_study, run
    from autoopt.targets import Targets

    target = 20.0
    space = load_space(None, "cpu")  # batch sizes 1..128, every runtime
    study = open_study(f"curve-{seed}", None, seed, space, "cpu", target_latency_ms=target)

    def evaluate(config: dict, number: int) -> TrialResult:
        ms = fake_latency_ms(config)
        metrics = {"latency_ms_p50": ms, "latency_ms_p95": ms, "throughput": config["batch_size"] / ms * 1e3,
                   "accuracy": 1.0, "accuracy_drop": 0.0, "peak_memory_mb": 1.0}
        if ms > target:  # the early stop: over the target, pruned with what it measured
            return TrialResult.pruned("latency over the target", {**metrics, "stopped_early": 1})
        return TrialResult.complete(metrics)

    class Notes:  # what the progress line and the MLflow tags see
        seen: list = []

        def trial_finished(self, record):
            self.seen.append((record.climb, record.curve))

    notes = Notes()
    run(study, space, [evaluate], Targets(latency_ms=target), 30, None, "cpu", [notes])
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 30 and trials[0].user_attrs.get("reference")
    wasted, fastest = 0, None
    for t in trials:
        if fastest is not None and t.params["batch_size"] * fastest > 2 * target:
            wasted += 1
        p95 = t.user_attrs.get("metrics", {}).get("latency_ms_p95")
        if p95:
            fastest = min(fastest or float("inf"), p95 / t.params["batch_size"])
    assert wasted == 0, [(t.params["compile_mode"], t.params["batch_size"]) for t in trials]
    assert all(t.user_attrs["curve"].startswith("batch_size ") for t in trials if t.user_attrs.get("curve"))
    assert any(t.user_attrs.get("climb") for t in trials)  # the best configuration tried at a larger batch
    assert [c for c, _ in notes.seen if c] == [t.user_attrs["climb"] for t in trials if t.user_attrs.get("climb")]
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best.params["compile_mode"] == "openvino" and best.params["batch_size"] >= 24  # still finds large batches
