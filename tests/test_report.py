"""The study report: what it says about the reference, the winner, the runner-up and the noise."""

from autoopt.report.artifacts import markdown, write_trials_csv
from autoopt.report.results import TrialRecord
from autoopt.targets import Targets

TARGETS = Targets(latency_ms=10.0, max_accuracy_drop=0.01)


def trial(number, throughput, p95, drop, batch, state="COMPLETE", reason=None):
    metrics = {"throughput": throughput, "latency_ms_p95": p95, "latency_ms_p50": p95 * 0.9, "peak_memory_mb": 5.0,
               "accuracy_drop": drop, "latency_cv": 0.05 * (number + 1), "machine_load": 0.5} if state == "COMPLETE" else {}
    t = TrialRecord(number, {"batch_size": batch, "compile_mode": "eager"}, state, metrics=metrics, reason=reason,
                    reference=number == 0)
    if state == "COMPLETE":
        t.constraints = TARGETS.constraints(metrics)
    return t


def test_the_report_names_reference_winner_runner_up_and_the_fastest_miss():
    trials = [trial(0, 100, 2.0, 0.0, 1), trial(1, 400, 8.0, 0.0, 8), trial(2, 300, 9.0, 0.0, 4),
              trial(3, 900, 30.0, 0.0, 64), trial(4, 0, 0, 0, 2, state="FAILED", reason="crashed: SIGSEGV")]
    text = markdown(trials, TARGETS, trials[0], {"batch_size": 0.9, "compile_mode": 0.1}, "Study s")
    assert "5 trials: 4 complete, 0 pruned, 1 failed." in text
    assert "4 measured fully, 0 screened out, 0 stopped early, 0 reused, 1 other; the latency curve moved 0" in text
    assert "## Winner\n\ntrial 1 (batch_size=8 compile_mode=eager): 400 samples/s, 4.00x the reference" in text
    assert "trial 2 (batch_size=4 compile_mode=eager): 300 samples/s, 3.00x the reference" in text and "25.0% slower" in text
    assert "trial 3 (batch_size=64" in text and "latency p95 30.00 ms is over the 10 ms target by 20.00 ms" in text
    assert "median 0.125, max 0.200 over 4 measured trials; 0 measured again for noise, 0 still unreliable" in text and "| batch_size | 0.900 |" in text


def test_no_feasible_trial_is_said_plainly(tmp_path):
    trials = [trial(0, 100, 20.0, 0.0, 1)]
    assert "No trial met every target." in markdown(trials, TARGETS, None, {}, "Study s")
    rows = write_trials_csv(trials, tmp_path).read_text().splitlines()
    assert rows[0].startswith("trial,state,feasible,reason,reused_from,curve,batch_size,compile_mode,throughput")
    assert rows[1].startswith("0,COMPLETE,False,,,,1,eager,100")


def test_the_history_and_importance_plots_are_pngs_of_the_trials(tmp_path):
    import matplotlib.image

    from autoopt.report.artifacts import plot_history, plot_importances

    trials = [trial(0, 100, 2.0, 0.0, 1), trial(1, 400, 8.0, 0.0, 8), trial(2, 900, 30.0, 0.0, 64),
              trial(3, 0, 0, 0, 2, state="FAILED", reason="crashed")]
    for path, name in ((plot_history(trials, tmp_path), "optimization_history.png"),
                       (plot_importances({"batch_size": 0.8, "compile_mode": 0.2}, tmp_path), "param_importances.png")):
        assert path == tmp_path / name and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert width == 700 and height >= 250  # 7 inches at 100 dpi


def test_the_budget_counts_each_trial_once():
    from autoopt.report.artifacts import budget

    full, reused = trial(0, 100, 2.0, 0.0, 1), trial(1, 100, 2.0, 0.0, 1)
    reused.reused_from = 0
    screened = trial(2, 0, 0, 0, 8, state="PRUNED", reason="screened")
    screened.metrics = {"screen_throughput": 40.0, "screened": 1}
    stopped = trial(3, 0, 0, 0, 64, state="PRUNED", reason="over")
    stopped.metrics, stopped.curve = {"latency_ms_p95": 30.0, "stopped_early": 1}, "batch_size 128 -> 64: ..."
    conflict = trial(4, 0, 0, 0, 2, state="PRUNED", reason="int8 with bf16")
    assert budget([full, reused, screened, stopped, conflict]) == {
        "measured fully": 1, "screened out": 1, "stopped early": 1, "reused": 1, "other": 1,
        "batch moved by the latency curve": 1}
