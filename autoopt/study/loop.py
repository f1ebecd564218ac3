"""The Optuna study: maximize throughput subject to latency, memory and accuracy-drop constraints.

The ask/tell loop with its budget (trials, timeout, `--jobs` threads), the warm start (sampler.WarmStart),
heartbeats and the recovery of abandoned trials (at start and on every beat), and the look-ups that
spare a trial (a conflict, an earlier failure that covers it, an earlier identical measurement). The
reference configuration is always trial 0. Each trial's outcome lives in Optuna's storage (see
results.py). Listeners (MLflow tracking, progress output) are told when a trial starts and finishes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from .. import knobs
from . import attrs
from .attrs import TrialAttrs
from .budget import ABANDONED, STALE_S, Budget
from ..machine import host_id
from ..trial.protocol import TrialResult
from ..report.results import INTERRUPTED, TrialRecord, TrialState, records
from .sampler import WarmStart
from .storage import search_meta
from ..targets import Targets

def open_study(name: str, storage, seed: int | None, space, device: str, sampler: str = "tpe",
               target_latency_ms: float | None = None):
    """Create or resume the study; the sampler behind the valid-configuration filter (which keeps batch
    sizes within what the latency curve allows under `target_latency_ms`)."""
    import optuna

    from .sampler import ValidConfigSampler, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = ValidConfigSampler(
        make_sampler(sampler, seed, space), space.distributions(), lambda c: space.conflict(c, device),
        knobs.canonical, knobs.in_scope, seed=seed, required=space.required,
        target_latency_ms=None if sampler == "grid" else target_latency_ms,  # the grid visits every combination
        climb=sampler in ("tpe", "gp"),  # local steps from the best trial; random and grid stay what they say
    )
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True, sampler=sampler
    )
    if study.metric_names is None:  # optuna-dashboard and trials_dataframe() show the objective by name
        import warnings

        with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged through 5.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["throughput"])
    return study


STOP_WAIT_S = 10.0  # after Ctrl-C, how long the search waits for its jobs to mark their trials


def run(
    study,
    space,
    evaluators: list[Callable[[dict, int], TrialResult]],
    targets: Targets,
    n_trials: int,
    timeout_s: float | None,
    device: str,
    listeners: list,
    storage=None,
    on_interrupt: Callable[[], None] | None = None,
    warm_start: bool = True,
    patience: int | None = None,
) -> None:
    """Ask/tell until the study holds `n_trials` finished trials, `timeout_s` has passed, or (with
    `patience`) that many trials have finished since the best feasible one.

    One thread per evaluator (`--jobs`); `evaluate(config, number)` returns the worker's TrialResult.
    On Ctrl-C, `on_interrupt()` stops the running trials: each evaluator then raises KeyboardInterrupt
    in its thread, and the trial is marked before this re-raises.
    """
    import threading

    _recover_abandoned(study, storage, listeners)
    existing = study.get_trials(deepcopy=False)
    fresh = all(TrialAttrs.of(t).reference for t in existing)  # nothing past the reference
    if not any(TrialAttrs.of(t).reference and t.state.name in ("COMPLETE", "RUNNING", "WAITING") for t in existing):
        attrs.enqueue(study, space.reference_config(), reference=True)
    budget = Budget(study, n_trials, timeout_s, patience)
    budget.recover = lambda: _recover_abandoned(study, storage, listeners)
    budget.prepare = space.suggest
    if fresh and warm_start:  # a resumed study already has what these would teach
        budget.before_ask = WarmStart(study, space, device, targets)
    finished_before = [r for r in records(study) if r.state != TrialState.RUNNING and r.reason != ABANDONED]
    _notify(listeners, "search_started", finished_before, n_trials, len(evaluators), timeout_s)
    errors: list[BaseException] = []

    finished = [threading.Event() for _ in evaluators]

    def loop(evaluate, finished: threading.Event) -> None:
        try:
            while (trial := budget.ask()) is not None:
                try:
                    _run_trial(study, trial, space, evaluate, targets, device, listeners)
                finally:
                    budget.done(trial)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            budget.stop.set()
            errors.append(exc)
        finally:
            finished.set()

    threads = [threading.Thread(target=loop, args=(e, f), name=f"autoopt-job-{i}", daemon=True)
               for i, (e, f) in enumerate(zip(evaluators, finished))]
    heartbeat = threading.Thread(target=budget.beat, name="autoopt-heartbeat", daemon=True)
    for t in (*threads, heartbeat):
        t.start()
    # Waiting on events, not Thread.join: in Python 3.11 a Ctrl-C that lands inside join() can mark a
    # running thread as stopped, and the interrupted trial would then never be marked.
    try:
        for f in finished:
            while not f.wait(0.2):
                pass
    except KeyboardInterrupt:
        budget.stop.set()
        if on_interrupt is not None:
            on_interrupt()
        stuck = [i for i, f in enumerate(finished) if not f.wait(STOP_WAIT_S)]
        if stuck:  # a job blocked outside its worker: its trial stays RUNNING; the next search recovers it
            logging.getLogger("autoopt").warning("%d job(s) did not stop within %g s; their trials are recovered by "
                                                 "the next search of this study.", len(stuck), STOP_WAIT_S)
        for exc in errors:
            if not isinstance(exc, KeyboardInterrupt):
                logging.getLogger("autoopt").error("a job failed while stopping: %r", exc)
        raise
    finally:
        budget.stop.set()
        _notify(listeners, "search_finished")
    for exc in errors:
        raise exc


def _run_trial(study, trial, space, evaluate, targets: Targets, device: str, listeners: list) -> None:
    import optuna

    config = space.suggest(trial)
    # how sampling moved it: read back by later samplings and the report
    attrs.record(trial, **getattr(study.sampler, "notes", {}).pop(trial.number, {}))
    kept = TrialAttrs.of(trial)
    record = TrialRecord(trial.number, config, TrialState.RUNNING, reference=kept.reference, curve=kept.curve,
                         climb=kept.climb)
    _notify(listeners, "trial_started", record)
    if record.run_id:
        attrs.record(trial, mlflow_run_id=record.run_id)
    try:
        result = _outcome(study, trial, config, space.conflict(config, device), evaluate, record)
    except KeyboardInterrupt:
        record.state, record.reason = TrialState.FAILED, INTERRUPTED
        attrs.record(trial, reason=INTERRUPTED)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _notify(listeners, "trial_finished", record)
        raise
    _tell(study, trial, record, result, targets)
    _notify(listeners, "trial_finished", record)


def _outcome(study, trial, config: dict, reason: str | None, evaluate, record: TrialRecord) -> TrialResult:
    """The trial's result: pruned for a conflict (`reason`) or an earlier failure that covers it, an earlier
    identical measurement reused, or else evaluated in a worker."""
    if reason:
        return TrialResult.pruned(reason)
    failed_before = _within_pruned_scope(study, config)
    if failed_before is not None:  # only when the space is exhausted: the sampler avoids these
        before = TrialAttrs.of(failed_before)
        return TrialResult.pruned(f"{before.reason} (as trial {failed_before.number})", scope=before.pruned_scope)
    previous = _same_config(study, config)
    if previous is not None:
        # Re-measuring an identical configuration costs a full trial and teaches the sampler nothing.
        record.reused_from = previous.number
        attrs.record(trial, reused_from=previous.number)
        return TrialResult.complete(dict(TrialAttrs.of(previous).metrics))
    return evaluate(config, trial.number)


def _tell(study, trial, record: TrialRecord, result: TrialResult, targets: Targets) -> None:
    """Record the result on the Optuna trial (value, constraints, metrics, reason) and on `record`."""
    import optuna

    record.state, record.metrics, record.reason, record.log_path = (result.state, result.metrics, result.reason,
                                                                    result.log_path)
    if record.reason:
        attrs.record(trial, reason=record.reason)
    if result.state == TrialState.COMPLETE:
        record.constraints = targets.constraints(record.metrics)
        for key, value in record.constraints.items():
            trial.set_constraint(key, value)
        attrs.record(trial, metrics=record.metrics)
        study.tell(trial, record.metrics["throughput"])
    elif result.state == TrialState.PRUNED:
        if record.metrics:  # stopped past a target: what was measured still places it (closest trial, report)
            record.constraints = targets.constraints(record.metrics)
            attrs.record(trial, metrics=record.metrics, constraints=record.constraints)
        if result.scope:
            attrs.record(trial, pruned_scope=result.scope)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _recover_abandoned(study, storage, listeners: list) -> None:
    """Trials left RUNNING by a search process that no longer runs (kill -9, power loss, a lost
    machine) become FAILED with a reason, and listeners close their runs. On this host the owner's pid
    answers; for another host, a heartbeat older than STALE_S does (several machines on one RDB)."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        kept = TrialAttrs.of(t)
        owner = kept.owner or {}
        if owner.get("host") == host_id():
            if _alive(owner.get("pid")):
                continue
        elif time.time() - float(kept.heartbeat if kept.heartbeat is not None else owner.get("since", 0)) < STALE_S:
            continue
        if storage is not None:
            attrs.record_by_number(storage, study, t.number, reason=ABANDONED)
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (RuntimeError, ValueError):  # another survivor recovered it first
            continue
        if kept.reference:  # the study needs one: measured again by whoever asks next
            attrs.enqueue(study, dict(t.params), reference=True)
        record = TrialRecord(t.number, dict(t.params), TrialState.FAILED, reason=ABANDONED, reference=kept.reference,
                             run_id=kept.mlflow_run_id)
        _notify(listeners, "trial_recovered", record, search_meta(study, owner.get("host")))


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_config(study, config: dict):
    """An earlier complete trial that built and measured the same thing (same canonical config)."""
    return _earlier_complete(study, config)


def _within_pruned_scope(study, config: dict):
    """An earlier trial whose build-time failure covers this configuration, or None."""
    for t in study.get_trials(deepcopy=False):
        scope = TrialAttrs.of(t).pruned_scope
        if scope and knobs.in_scope(config, scope):
            return t
    return None


NUMERICS_METRICS = ("accuracy", "loss_final", "loss_deviation", "grad_cosine", "accuracy_drop")


def known_numerics(study, config: dict) -> dict | None:
    """The numerics metrics (accuracy; for training the loss deviation and gradient cosine) an earlier
    trial measured for the same numerics, or None."""
    earlier = _earlier_complete(study, config, ignoring=knobs.numerics_free())
    if earlier is None:
        return None
    return {k: v for k, v in TrialAttrs.of(earlier).metrics.items() if k in NUMERICS_METRICS}


def _earlier_complete(study, config: dict, ignoring: tuple = ()):
    """An earlier complete, measured trial whose canonical configuration equals this one's, knobs in
    `ignoring` aside; None when there is none."""
    def key(c: dict) -> dict:
        return {k: v for k, v in knobs.canonical(c).items() if k not in ignoring}

    target = key(config)
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and TrialAttrs.of(t).metrics is not None and key(t.params) == target:
            return t
    return None


def _notify(listeners: list, event: str, *args) -> None:
    for listener in listeners:
        handler = getattr(listener, event, None)
        if handler is not None:
            handler(*args)
