"""The search's progress: a line per trial with its place in the budget, the best so far, the time left."""

import io
import threading

from rich.console import Console

from autoopt.report.progress import Progress, clock, time_left_s
from autoopt.report.results import TrialRecord, TrialState


def record(number, throughput=None, feasible=True, state=TrialState.COMPLETE):
    metrics = {"throughput": throughput, "latency_ms_p95": 1.0, "peak_memory_mb": 2.0, "accuracy": 0.9,
               "accuracy_drop": 0.0} if state == TrialState.COMPLETE else {}
    r = TrialRecord(number, {"batch_size": 8}, state, metrics=metrics, reference=number == 0,
                    reason=None if state == TrialState.COMPLETE else "stopped: p95 over the target")
    r.constraints = {"latency": -1.0 if feasible else 1.0}
    return r


def test_time_left_is_the_rate_so_far_capped_by_the_timeout():
    assert time_left_s(0, 5.0, 10, None) is None  # nothing finished here yet: no rate
    assert time_left_s(4, 20.0, 6, None) == 30.0  # 5 s a trial, 6 to go
    assert time_left_s(4, 20.0, 6, 12.0) == 12.0  # --timeout ends it sooner
    assert time_left_s(0, 5.0, 10, 100.0) == 100.0 and time_left_s(3, 9.0, 0, None) == 0.0
    assert (clock(75), clock(3725)) == ("1:15", "1:02:05")


def test_a_log_gets_one_line_per_trial_with_its_place_the_new_best_and_the_time_left(monkeypatch):
    out = io.StringIO()
    progress = Progress(Console(file=out, width=300, force_terminal=False))
    now = [100.0]
    monkeypatch.setattr("autoopt.report.progress.time.monotonic", lambda: now[0])
    resumed = [record(0, 50.0)]  # a resumed study: the trial it holds counts, and is the best so far
    progress.search_started(resumed, 4, 1, None)
    for number, throughput, feasible in ((1, 80.0, True), (2, 500.0, False), (3, 60.0, True)):
        progress.trial_started(record(number, throughput))
        now[0] += 10.0
        done = record(number, throughput, feasible)
        if number == 3:  # measured serving (a memory target on the serving basis)
            done.metrics["serving_rss_mb"] = 257.4
        progress.trial_finished(done)
    progress.search_finished()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[2/4] #1   batch_size=8  p95 1.00 ms  80/s") and "feasible new best" in lines[0]
    assert lines[0].endswith("~0:20 left")  # 10 s a trial here, 2 to go
    assert lines[1].startswith("[3/4] #2 ") and "infeasible" in lines[1] and "new best" not in lines[1]
    assert lines[2].startswith("[4/4] #3 ") and "left" not in lines[2]  # the last one: nothing left
    assert "60/s  serving 257 MB  mem 2.0 MB" in lines[2] and "serving" not in lines[0]
    assert progress.best == (80.0, 1) and "best 80/s (#1)" in progress.status()


def test_a_terminal_shows_a_bar_that_stops_with_the_search():
    out = io.StringIO()
    progress = Progress(Console(file=out, width=200, force_terminal=True, color_system=None))
    progress.search_started([], 2, 1, 600.0)
    progress.trial_started(record(0, 10.0))
    assert "no feasible trial yet" in progress.status() and "~10:00 left" in progress.status()  # the timeout bounds it
    assert "#0 (reference): batch_size=8" in progress.status()
    progress.trial_finished(record(0, 10.0))
    progress.bar.refresh()
    refreshing = [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]  # rich's Live
    assert refreshing and "trials" in out.getvalue() and "1/2" in out.getvalue() and "best 10/s (#0)" in out.getvalue()
    progress.search_finished()
    assert progress.bar is None
    for thread in refreshing:  # told to stop: it ends at its next wake-up
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in refreshing)
