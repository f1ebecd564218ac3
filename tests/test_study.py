"""Study bookkeeping: accuracy reuse, equivalent configurations, calibration fallback."""

import optuna

from autoopt import knobs
from autoopt.study.loop import _same_config, known_numerics
from autoopt.trial.build import calibration_batches
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
    assert known_numerics(study, {**base, "batch_size": 64, "threads": 1}) == {"accuracy": 0.97}
    assert known_numerics(study, {**base, "quantization": "static_int8"}) is None
    assert known_numerics(study, {**base, "compile_mode": "eager"}) is None


def test_equivalent_configurations_share_a_measurement():
    ref = knobs.reference_config()
    study = study_with(ref, 1.0)
    assert _same_config(study, {**ref, "quant_granularity": "per_tensor"}) is not None
    assert _same_config(study, {**ref, "batch_size": 8}) is None


def test_calibration_falls_back_to_make_inputs_batches():
    batches = calibration_batches(load_pipeline(TINY_DICT))
    assert len(batches) == 8 and batches[0][0].shape == (32, 5, 8)


def test_abandoned_trials_are_found_by_pid_here_and_by_heartbeat_elsewhere():
    import os
    import socket
    import time

    from autoopt.study.loop import ABANDONED, STALE_S, _recover_abandoned

    study = optuna.create_study()
    owners = {
        "dead_here": ({"host": socket.gethostname(), "pid": 2**22 + 12345, "since": time.time()}, time.time()),
        "alive_here": ({"host": socket.gethostname(), "pid": os.getpid(), "since": 0}, 0),
        "stale_elsewhere": ({"host": "other-machine", "pid": 1, "since": 0}, time.time() - STALE_S - 5),
        "beating_elsewhere": ({"host": "other-machine", "pid": 1, "since": 0}, time.time()),
    }
    for name, (owner, beat) in owners.items():
        trial = study.ask()
        trial.set_user_attr("name", name)
        trial.set_user_attr("owner", owner)
        trial.set_user_attr("heartbeat", beat)

    recovered = []

    class Listener:
        def trial_recovered(self, record, owner):
            recovered.append(record.number)

    _recover_abandoned(study, study._storage, [Listener()])
    state = {t.user_attrs["name"]: (t.state.name, t.user_attrs.get("reason")) for t in study.trials}
    assert state == {"dead_here": ("FAIL", ABANDONED), "alive_here": ("RUNNING", None),
                     "stale_elsewhere": ("FAIL", ABANDONED), "beating_elsewhere": ("RUNNING", None)}
    assert recovered == [0, 2]


def warm_run(monkeypatch, features: list[str], trials: int = 5, bf16_speedup: float = 0.8):
    """A search over the default space on a CPU with these features, where bf16 matrix products measure
    `bf16_speedup` x fp32; the reference takes 2 ms per sample."""
    from autoopt import machine
    from autoopt.trial.protocol import TrialResult
    from autoopt.study.space import load_space
    from autoopt.study.loop import open_study, run
    from autoopt.targets import Targets

    monkeypatch.setattr(machine, "cpu_info", lambda: {"model": "fake", "cores": 2, "features": features})
    monkeypatch.setattr(machine, "bf16_matmul_speedup", lambda: bf16_speedup)
    space = load_space(None, "cpu")  # batch sizes 1..128
    study = open_study("warm", None, 0, space, "cpu")
    asked = []

    def evaluate(config: dict, number: int) -> TrialResult:
        asked.append(config)
        ms = 2.0 * config["batch_size"] / (1 if number == 0 else 4)
        return TrialResult.complete({
            "latency_ms_p50": ms, "latency_ms_p95": ms, "throughput": config["batch_size"] / ms * 1e3,
            "accuracy": 1.0, "accuracy_drop": 0.0, "peak_memory_mb": 1.0})

    run(study, space, [evaluate], Targets(latency_ms=20.0), trials, None, "cpu", [])
    return space, study, asked


def test_warm_start_follows_the_reference_with_a_batch_the_latency_target_allows(monkeypatch):
    space, study, asked = warm_run(monkeypatch, ["AVX-512", "AVX2"])
    assert asked[0] == space.reference_config()
    # 20 ms / 2 ms per sample x WARM_START_SPEEDUP (2) = 20 samples: the largest power of two up to that is 16
    assert [(c["compile_mode"], c["batch_size"]) for c in asked[1:4]] == [
        ("torchscript", 16), ("onnxruntime", 16), ("onnxruntime", 16)]
    assert all(t.user_attrs.get("warm_start") for t in study.trials[1:4])
    assert not any(c["precision"] == "bf16" for c in asked[:4])  # no bf16 units: bf16 is not warm-started


def test_a_cpu_with_amx_bf16_tries_bf16_among_the_first_five_and_one_without_does_not(monkeypatch):
    _, _, amx = warm_run(monkeypatch, ["AMX-BF16", "AMX-INT8", "AVX512-VNNI", "AVX512-BF16"])
    assert [(c["precision"], c["quantization"], c["compile_mode"]) for c in amx[1:5]] == [
        ("fp32", "static_int8", "openvino"), ("bf16", "none", "openvino"), ("bf16", "none", "inductor"),
        ("bf16", "static_int8", "openvino")]
    assert amx[4]["int8_layers"] == "auto"  # int8 where it holds, the rest in bf16
    # VNNI and AVX512-BF16 without AMX (bf16 lost to f32 there): int8 first, no bf16
    _, study, vnni = warm_run(monkeypatch, ["AVX512-VNNI", "AVX512-BF16", "AVX-512"])
    assert [(c["quantization"], c["compile_mode"]) for c in vnni[1:5]] == [
        ("static_int8", "openvino"), ("static_int8", "torchscript"), ("dynamic_int8", "onnxruntime"),
        ("none", "onnxruntime")]
    assert not any(c["precision"] == "bf16" for c in vnni) and all(t.user_attrs.get("warm_start") for t in study.trials[1:5])


def test_the_same_flags_with_bf16_measured_fast_try_bf16_first(monkeypatch):
    _, _, fast = warm_run(monkeypatch, ["AVX512-VNNI", "AVX512-BF16", "AVX-512"], bf16_speedup=2.0)
    assert [(c["precision"], c["quantization"], c["compile_mode"]) for c in fast[1:4]] == [
        ("fp32", "static_int8", "openvino"), ("bf16", "none", "openvino"), ("bf16", "none", "inductor")]


def test_patience_ends_the_search_that_stopped_improving():
    from autoopt.trial.protocol import TrialResult
    from autoopt.study.space import load_space
    from autoopt.study.budget import since_best
    from autoopt.study.loop import open_study, run
    from autoopt.targets import Targets

    space = load_space(None, "cpu")
    study = open_study("patience", None, 0, space, "cpu")

    def evaluate(config: dict, number: int) -> TrialResult:
        throughput = 100.0 if number == 2 else 10.0 + number * 0.01 * (number < 2)  # #2 is the best there will be
        return TrialResult.complete({"latency_ms_p50": 1.0, "latency_ms_p95": 1.0, "throughput": throughput,
                                     "accuracy": 1.0, "accuracy_drop": 0.0, "peak_memory_mb": 1.0})

    run(study, space, [evaluate], Targets(latency_ms=20.0), 30, None, "cpu", [], warm_start=False, patience=4)
    assert len(study.trials) == 2 + 1 + 4  # up to the best (#2), then 4 without a better one
    assert since_best(study.get_trials(deepcopy=False)) == 4


def test_the_contenders_bar_is_a_share_of_the_best_feasible_trial_and_spares_the_reference():
    from autoopt.study.runner import SCREEN_SHARE, contender_bar

    study = optuna.create_study(direction="maximize")
    for throughput, drop in ((100.0, 0.0), (300.0, 0.5), (200.0, 0.0)):  # the 300/s one misses the accuracy target
        trial = study.ask({"batch_size": optuna.distributions.IntDistribution(1, 64)})
        trial.set_user_attr("metrics", {"throughput": throughput, "accuracy_drop": drop})
        trial.set_constraint("accuracy", drop - 0.01)
        study.tell(trial, throughput)
    reference = study.ask()
    reference.set_user_attr("reference", True)
    trials = study.get_trials(deepcopy=False)
    assert contender_bar(trials, 4) == SCREEN_SHARE * 200.0
    assert contender_bar(trials, reference.number) is None  # the reference is always timed fully
    assert contender_bar(trials[:0], 0) is None  # nothing feasible yet


def test_with_an_export_the_bar_is_the_best_trial_of_the_runtime_it_ships():
    from autoopt.study.runner import SCREEN_SHARE, contender_bar

    study = optuna.create_study(direction="maximize")
    for mode, throughput in (("eager", 500.0), ("onnxruntime", 100.0)):
        study.enqueue_trial({"compile_mode": mode})
        trial = study.ask({"compile_mode": optuna.distributions.CategoricalDistribution(["eager", "onnxruntime"])})
        trial.set_user_attr("metrics", {"throughput": throughput})
        study.tell(trial, throughput)
    trials = study.get_trials(deepcopy=False)
    assert contender_bar(trials, 9) == SCREEN_SHARE * 500.0
    assert contender_bar(trials, 9, "onnxruntime") == SCREEN_SHARE * 100.0  # the eager reference does not ship
    assert contender_bar(trials, 9, "openvino") is None


def test_the_budget_waits_for_trials_that_other_processes_run_and_takes_over_an_abandoned_ones_place():
    import threading

    from autoopt.study.budget import ABANDONED, Budget

    def elsewhere(study):
        trial = study.ask()
        trial.set_user_attr("owner", {"host": "other-machine", "pid": 1, "since": 0})
        return trial

    def ask_in_thread(budget):
        got = []
        thread = threading.Thread(target=lambda: got.append(budget.ask()), daemon=True)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # the study's last place is another process's running trial
        return thread, got

    study = optuna.create_study()
    other = elsewhere(study)
    thread, got = ask_in_thread(Budget(study, n_trials=1, timeout_s=None))
    study.tell(other, 1.0)  # it finished: the study is complete and this search ends
    thread.join(10)
    assert got == [None]

    study = optuna.create_study()
    other = elsewhere(study)
    thread, got = ask_in_thread(Budget(study, n_trials=1, timeout_s=None))
    other.set_user_attr("reason", ABANDONED)
    study.tell(other, state=optuna.trial.TrialState.FAIL)  # recovered: its place is free again
    thread.join(10)
    assert got and got[0] is not None and got[0].number == 1

    own = Budget(optuna.create_study(), n_trials=1, timeout_s=None)
    assert own.ask() is not None and own.ask() is None  # its own running trial: nothing to wait for
