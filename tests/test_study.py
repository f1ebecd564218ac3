"""Study bookkeeping: accuracy reuse, equivalent configurations, calibration fallback."""

import optuna

from autoopt import knobs
from autoopt.study import _same_config, known_accuracy
from autoopt.worker import calibration_batches
from autoopt.pipeline import load_pipeline
from conftest import TINY_DICT


def study_with(config: dict, accuracy: float):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for name, value in config.items():
        trial.suggest_categorical(name, [value])
    trial.set_user_attr("metrics", {"accuracy": accuracy, "throughput": 1.0})
    study.tell(trial, 1.0)
    return study


def test_accuracy_is_reused_across_batch_size_and_threads_only():
    base = {**knobs.reference_config(), "quantization": "dynamic_int8", "compile_mode": "onnxruntime"}
    study = study_with(base, 0.97)
    assert known_accuracy(study, {**base, "batch_size": 64, "threads": 1}) == 0.97
    assert known_accuracy(study, {**base, "quantization": "static_int8"}) is None
    assert known_accuracy(study, {**base, "compile_mode": "eager"}) is None


def test_equivalent_configurations_share_a_measurement():
    ref = knobs.reference_config()
    study = study_with(ref, 1.0)
    assert _same_config(study, {**ref, "quant_granularity": "per_tensor"}) is not None
    assert _same_config(study, {**ref, "batch_size": 8}) is None


def test_calibration_falls_back_to_make_inputs_batches():
    batches = calibration_batches(load_pipeline(TINY_DICT))
    assert len(batches) == 8 and batches[0][0].shape == (32, 5, 8)
