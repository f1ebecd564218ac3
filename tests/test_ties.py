"""Ties within the noise, broken as a user would (fixed figures), and one basis per table."""

from rich.console import Console

from autoopt.api import SearchResult
from autoopt.report.printing import summary_table
from autoopt.report.artifacts import markdown
from autoopt.report.results import TrialRecord, TrialState, ranked_feasible, tie_of, winning_tie
from autoopt.targets import Targets


def trial(number: int, throughput: float, p95: float, *, q=(0.97, 1.03), serving=None, size=1.0, mode="openvino",
          remeasured=True, reference=False) -> TrialRecord:
    """A feasible trial; re-measured at `throughput` with per-round speedups spread `q` (relative) around it."""
    speedup = throughput / 1000.0  # the reference runs 1,000 samples/s
    metrics = {"throughput": throughput * 0.9, "latency_ms_p50": p95 / 2, "latency_ms_p95": p95, "accuracy": 0.9,
               "accuracy_drop": 0.0, "peak_memory_mb": 5.0, "model_size_mb": size}
    if serving is not None:
        metrics["serving_rss_mb"] = serving
    record = TrialRecord(number, {"compile_mode": mode, "batch_size": number + 1}, TrialState.COMPLETE, metrics,
                         reference=reference)
    if remeasured:
        record.remeasured = {"throughput": throughput, "latency_ms_p50": p95 / 2, "latency_ms_p95": p95,
                             "speedup": speedup, "speedup_q25": speedup * q[0], "speedup_q75": speedup * q[1],
                             "rounds": 10, "feasible": True}
    return record


REFERENCE = trial(0, 1000.0, 2.0, q=(1, 1), mode="eager", reference=True)


def test_equal_within_noise_goes_to_the_lower_p95():
    # the figures: OpenVINO b104 10,391/s (p95 10.4 ms) beside TorchScript b16 10,390/s (p95 1.8 ms)
    ov, ts = trial(16, 10391.0, 10.4), trial(4, 10390.0, 1.8, mode="torchscript")
    ranked = ranked_feasible([REFERENCE, ov, ts])
    assert ranked[0] is ts
    tie = winning_tie([REFERENCE, ov, ts])
    assert tie.winner is ts and tie.fastest is ov and tie.on == "p95"
    text = tie.describe()
    assert text.startswith("a tie within the noise with trial 16 (per-round speedups, interquartile: trial 16 ")
    assert "taken over the fastest, trial 16, for its lower p95, 1.80 ms vs 10.40 ms" in text


def test_the_same_p95_goes_to_the_lower_serving_memory_then_the_smaller_file():
    a, b = trial(1, 5000.0, 2.0, serving=300.0), trial(2, 4990.0, 2.1, serving=90.0)
    tie = tie_of(sorted([a, b], key=lambda t: -t.remeasured["throughput"]))
    assert tie.winner is b and tie.on == "serving memory"
    assert "its lower serving memory, 90 MB vs 300 MB (p95 within 10%)" in tie.describe()
    c, d = trial(3, 5000.0, 2.0, serving=100.0, size=8.0), trial(4, 4990.0, 2.0, serving=100.0, size=2.0)
    tie = tie_of([c, d])
    assert tie.winner is d and tie.on == "model size" and "its smaller model file, 2.00 MB vs 8.00 MB" in tie.describe()
    e, f = trial(5, 5000.0, 2.0, serving=100.0), trial(6, 4990.0, 2.0, serving=100.0)
    tie = tie_of([e, f])
    assert tie.winner is e and "the fastest stays" in tie.describe()


def test_apart_beyond_the_noise_is_no_tie():
    fast, slow = trial(1, 6000.0, 9.0, q=(0.99, 1.01)), trial(2, 5000.0, 1.0, q=(0.99, 1.01))
    assert winning_tie([REFERENCE, fast, slow]) is None
    assert ranked_feasible([REFERENCE, fast, slow])[0] is fast
    # tight ranges that do not overlap, but under the noise floor apart: a tie all the same
    near = trial(3, 5950.0, 1.0, q=(0.999, 1.001))
    assert winning_tie([REFERENCE, trial(1, 6000.0, 9.0, q=(0.999, 1.001)), near]).winner is near


def test_one_basis_per_table_and_the_tie_in_the_report():
    ov, ts = trial(16, 10391.0, 10.4), trial(4, 10390.0, 1.8, mode="torchscript")
    alone = trial(19, 11399.0, 1.5, remeasured=False, mode="onnxruntime")  # faster in the search, never re-measured
    reference = trial(0, 1000.0, 2.0, q=(1, 1), mode="eager", reference=True)
    reference.metrics["throughput"] = 1142.0  # the reference's own trial figure: the basis of the second section
    trials = [reference, ov, ts, alone]
    result = SearchResult(study=None, study_name="s", pipeline="p", targets=Targets(), trials=trials,
                          reference_accuracy=0.9, tracking_uri="", experiment_id="", parent_run_id="")
    console = Console(width=250, record=True)
    console.print(summary_table(result))
    lines = console.export_text().splitlines()
    at = {name: next(i for i, line in enumerate(lines) if name in line)
          for name in ("re-measured interleaved at the end", "each trial's own timing (another basis)")}
    first, second = at.values()
    assert first < second
    rows = [line for line in lines if "(ref)" in line]
    assert len(rows) == 2 and "1.00x (1.00-1.00)" in rows[0] and "1,142" in rows[1] and "1.00x" in rows[1]
    row_19 = next(line for line in lines if line.lstrip("│ ").startswith("19 "))
    assert lines.index(row_19) > second and f"{11399 * 0.9 / 1142:.2f}x" in row_19  # its trial figure over the reference's
    row_4 = next(line for line in lines if line.lstrip("│ ").startswith("4 "))
    assert lines.index(row_4) < second and "10.39x (10.08-10.70)" in row_4
    text = markdown(trials, Targets(), reference, {}, "t")
    assert "It won a tie within the noise with trial 16" in text and "within the noise (the tie above)" in text
