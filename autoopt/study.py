"""The Optuna study: maximize throughput subject to latency, memory and accuracy-drop constraints.

The reference configuration is always trial 0. Each trial's outcome lives in Optuna's storage (value,
constraints, user attrs "metrics" and "reason"), so a `TrialRecord` can be rebuilt from any study.
Listeners (MLflow tracking, progress output) are told when a trial starts and finishes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from . import knobs

COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAILED", "RUNNING"
INTERRUPTED = "interrupted by the user"  # the reason of a trial stopped by Ctrl-C
ABANDONED = "abandoned: the search process running it died (killed?) or stopped beating; recovered when the study resumed"


GRAD_COSINE_MIN = 0.99  # training: the first step's gradient must point where the reference's does


@dataclass(frozen=True)
class Targets:
    latency_ms: float | None = None  # bound on p95 latency of one batch call (training: of one step)
    memory_mb: float | None = None  # bound on peak memory (training: of one step)
    max_accuracy_drop: float = 0.01  # training: the relative loss deviation after the numerics steps

    def constraints(self, metrics: dict) -> dict[str, float]:
        """Optuna constraint values: feasible iff every one is <= 0. A trial stopped early has only
        some metrics, hence only some values."""
        out = {}
        if "accuracy_drop" in metrics:
            out["accuracy"] = metrics["accuracy_drop"] - self.max_accuracy_drop
        if "grad_cosine" in metrics:
            out["gradient"] = GRAD_COSINE_MIN - metrics["grad_cosine"]
        if self.latency_ms is not None and "latency_ms_p95" in metrics:
            out["latency"] = metrics["latency_ms_p95"] - self.latency_ms
        if self.memory_mb is not None and "peak_memory_mb" in metrics:
            out["memory"] = metrics["peak_memory_mb"] - self.memory_mb
        return out

    def bound(self, name: str) -> float:
        return {"accuracy": self.max_accuracy_drop, "latency": self.latency_ms, "memory": self.memory_mb,
                "gradient": GRAD_COSINE_MIN}[name]

    def describe_violation(self, name: str, excess: float) -> str:
        bound = self.bound(name)
        share = f" (+{excess / bound:.0%})" if bound else ""
        if name == "latency":
            return f"latency p95 {bound + excess:.2f} ms is over the {bound:g} ms target by {excess:.2f} ms{share}"
        if name == "memory":
            return f"peak memory {bound + excess:.1f} MB is over the {bound:g} MB target by {excess:.1f} MB{share}"
        if name == "gradient":
            return f"gradient cosine {bound - excess:.4f} vs the reference is under the required {bound:g}"
        return f"accuracy drop {bound + excess:.4f} is over the allowed {bound:g} by {excess:.4f}"


@dataclass
class TrialRecord:
    number: int
    config: dict
    state: str  # COMPLETE, PRUNED, FAILED, RUNNING
    metrics: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    reason: str | None = None
    reference: bool = False
    reused_from: int | None = None
    log_path: str | None = None  # the worker's log while the trial is being reported
    run_id: str | None = None  # the trial's MLflow run, set by the tracker
    remeasured: dict | None = None  # figures of the end-of-search interleaved re-measurement, if any

    @property
    def feasible(self) -> bool:
        return self.state == COMPLETE and all(v <= 0 for v in self.constraints.values())

    @classmethod
    def from_optuna(cls, trial) -> "TrialRecord":
        state = {"COMPLETE": COMPLETE, "PRUNED": PRUNED, "FAIL": FAILED}.get(trial.state.name, RUNNING)
        return cls(
            number=trial.number,
            config=dict(trial.params),
            state=state,
            metrics=dict(trial.user_attrs.get("metrics", {})),
            constraints=dict(trial.constraints or {}) if state == COMPLETE else dict(trial.user_attrs.get("constraints", {})),
            reason=trial.user_attrs.get("reason"),
            reference=bool(trial.user_attrs.get("reference")),
            reused_from=trial.user_attrs.get("reused_from"),
            run_id=trial.user_attrs.get("mlflow_run_id"),
        )


SAMPLERS = ("tpe", "gp", "random", "grid")


def make_sampler(name: str, seed: int | None, space=None):
    """TPE (default: multivariate, constraint-aware, 10 ms per trial here); GP (Gaussian process,
    constraint-aware, about 1.5 s per trial here: worth it when trials are slow and few); random;
    grid (every combination of a space of lists once, for exhaustive baselines)."""
    import optuna

    if name == "grid":
        numeric = [n for n, d in space.domains.items() if d.choices is None]
        if numeric:
            from .errors import ConfigError

            raise ConfigError(f"--sampler grid needs list domains; {space.source} gives {numeric[0]} a range. "
                              "List its values instead.")
        return optuna.samplers.GridSampler({n: list(d.choices) for n, d in space.domains.items()}, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(name: str, storage, seed: int | None, space, device: str, required: dict | None = None,
               sampler: str = "tpe"):
    """Create or resume the study; the sampler behind the valid-configuration filter."""
    import optuna

    from .sampler import ValidConfigSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = ValidConfigSampler(
        make_sampler(sampler, seed, space), space.distributions(), lambda c: knobs.conflict(c, device),
        knobs.canonical, knobs.in_scope, seed=seed, required=required,
    )
    return optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True, sampler=sampler
    )


# A known-good warm-start configuration serves a sample at least this many times faster than the
# reference (measured here: 5-20x); its batch size is capped where the target could still be met.
WARM_START_SPEEDUP = 2.0
HEARTBEAT_S = 30.0  # a running trial's owner writes a heartbeat this often
STALE_S = 4 * HEARTBEAT_S  # a trial of another host whose heartbeat is older than this is abandoned


def run(
    study,
    space,
    evaluators: list[Callable[[dict, int], dict]],
    targets: Targets,
    n_trials: int,
    timeout_s: float | None,
    device: str,
    listeners: list,
    storage=None,
    on_interrupt: Callable[[], None] | None = None,
    warm_start: bool = True,
) -> None:
    """Ask/tell until the study holds `n_trials` finished trials or `timeout_s` has passed.

    One thread per evaluator (`--jobs`); `evaluate(config, number)` returns the worker's result dict
    (status, reason, metrics). On Ctrl-C, `on_interrupt()` stops the running trials: each evaluator
    then raises KeyboardInterrupt in its thread, and the trial is marked before this re-raises.
    """
    import threading

    _recover_abandoned(study, storage, listeners)
    existing = study.get_trials(deepcopy=False)
    fresh = all(t.user_attrs.get("reference") for t in existing)  # nothing past the reference
    if not any(t.user_attrs.get("reference") and t.state.name in ("COMPLETE", "RUNNING", "WAITING") for t in existing):
        study.enqueue_trial(space.reference_config(), user_attrs={"reference": True})
    budget = _Budget(study, n_trials, timeout_s)
    if fresh and warm_start:  # a resumed study already has what these would teach
        budget.before_ask = _WarmStart(study, space, device, targets)
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
        for f in finished:
            f.wait()
        for exc in errors:
            if not isinstance(exc, KeyboardInterrupt):
                logging.getLogger("autoopt").error("a job failed while stopping: %r", exc)
        raise
    finally:
        budget.stop.set()
    for exc in errors:
        raise exc


class _WarmStart:
    """Enqueues the space's warm-start trials once the reference has finished: under a latency target
    their batch size is capped by the reference's figure, so that a known-good configuration is not
    wasted on a batch that cannot meet the target."""

    def __init__(self, study, space, device: str, targets: Targets):
        self.study, self.space, self.device, self.targets = study, space, device, targets
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        references = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("reference")]
        if not references or not references[-1].state.is_finished():
            return  # a parallel job asks meanwhile: it samples; these come on the next ask after it
        self.done = True
        reference = references[-1]  # a resumed study's earlier reference may have failed
        p95 = reference.user_attrs.get("metrics", {}).get("latency_ms_p95")
        max_batch = None
        if self.targets.latency_ms is not None and p95:
            per_sample_ms = p95 / reference.params.get("batch_size", 1)
            max_batch = self.targets.latency_ms / per_sample_ms * WARM_START_SPEEDUP
        for config in self.space.warm_start(self.device, max_batch):
            self.study.enqueue_trial(config, user_attrs={"warm_start": True})


class _Budget:
    """Hands out trials to the job threads: at most `n_trials` finished plus running in the study."""

    def __init__(self, study, n_trials: int, timeout_s: float | None):
        import threading

        self.before_ask: Callable[[], None] = lambda: None
        self.study, self.n_trials, self.timeout_s = study, n_trials, timeout_s
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.running: dict = {}

    def ask(self):
        with self.lock:
            if self.stop.is_set() or (self.timeout_s is not None and time.monotonic() - self.started >= self.timeout_s):
                return None
            states = [t.state for t in self.study.get_trials(deepcopy=False)]
            if sum(s.is_finished() or s.name == "RUNNING" for s in states) >= self.n_trials:
                return None
            self.before_ask()
            trial = self.study.ask()
            now = time.time()
            trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(), "since": now})
            trial.set_user_attr("heartbeat", now)
            self.running[trial.number] = trial
            return trial

    def done(self, trial) -> None:
        with self.lock:
            self.running.pop(trial.number, None)

    def beat(self) -> None:
        """Heartbeats of this process's running trials, so that other hosts can tell they are alive."""
        while not self.stop.wait(HEARTBEAT_S):
            with self.lock:
                trials = list(self.running.values())
            for trial in trials:
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except Exception:  # noqa: BLE001 - finished meanwhile; a missed beat is harmless
                    pass


def _run_trial(study, trial, space, evaluate, targets: Targets, device: str, listeners: list) -> None:
    import optuna

    config = space.suggest(trial)
    record = TrialRecord(trial.number, config, RUNNING, reference=bool(trial.user_attrs.get("reference")))
    _notify(listeners, "trial_started", record)
    if record.run_id:
        trial.set_user_attr("mlflow_run_id", record.run_id)
    reason = knobs.conflict(config, device)
    failed_before = None if reason else _within_pruned_scope(study, config)
    previous = None if reason or failed_before else _same_config(study, config)
    if reason:
        result = {"status": "pruned", "reason": reason, "metrics": {}}
    elif failed_before is not None:  # only when the space is exhausted: the sampler avoids these
        result = {"status": "pruned", "reason": f"{failed_before.user_attrs['reason']} (as trial {failed_before.number})",
                  "metrics": {}, "scope": failed_before.user_attrs["pruned_scope"]}
    elif previous is not None:
        # Re-measuring an identical configuration costs a full trial and teaches the sampler nothing.
        result = {"status": "complete", "reason": None, "metrics": dict(previous.user_attrs["metrics"])}
        record.reused_from = previous.number
        trial.set_user_attr("reused_from", previous.number)
    else:
        try:
            result = evaluate(config, trial.number)
        except KeyboardInterrupt:
            record.state, record.reason = FAILED, INTERRUPTED
            trial.set_user_attr("reason", INTERRUPTED)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _notify(listeners, "trial_finished", record)
            raise
    record.log_path = result.pop("log_path", None)
    record.metrics, record.reason = result["metrics"], result["reason"]
    if record.reason:
        trial.set_user_attr("reason", record.reason)
    if result["status"] == "complete":
        record.state = COMPLETE
        record.constraints = targets.constraints(record.metrics)
        for key, value in record.constraints.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("metrics", record.metrics)
        study.tell(trial, record.metrics["throughput"])
    elif result["status"] == "pruned":
        record.state = PRUNED
        if record.metrics:  # stopped past a target: what was measured still places it (closest trial, report)
            record.constraints = targets.constraints(record.metrics)
            trial.set_user_attr("metrics", record.metrics)
            trial.set_user_attr("constraints", record.constraints)
        if result.get("scope"):
            trial.set_user_attr("pruned_scope", result["scope"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        record.state = FAILED
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    _notify(listeners, "trial_finished", record)


def _recover_abandoned(study, storage, listeners: list) -> None:
    """Trials left RUNNING by a search process that no longer runs (kill -9, power loss, a lost
    machine) become FAILED with a reason, and listeners close their runs. On this host the owner's pid
    answers; for another host, a heartbeat older than STALE_S does (several machines on one RDB)."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == socket.gethostname():
            if _alive(owner.get("pid")):
                continue
        elif time.time() - float(t.user_attrs.get("heartbeat", owner.get("since", 0))) < STALE_S:
            continue
        if storage is not None:
            study_id = storage.get_study_id_from_name(study.study_name)
            storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                        "reason", ABANDONED)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        record = TrialRecord(t.number, dict(t.params), FAILED, reason=ABANDONED,
                             reference=bool(t.user_attrs.get("reference")), run_id=t.user_attrs.get("mlflow_run_id"))
        _notify(listeners, "trial_recovered", record)


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
        scope = t.user_attrs.get("pruned_scope")
        if scope and knobs.in_scope(config, scope):
            return t
    return None


# Knobs that change speed but not numerics: the pipeline's evaluate batches by itself, the fidelity
# check and the training numerics use fixed batches, so a candidate's numerics do not depend on them.
NUMERICS_FREE = ("batch_size", "threads")
NUMERICS_METRICS = ("accuracy", "loss_final", "loss_deviation", "grad_cosine", "accuracy_drop")


def known_numerics(study, config: dict) -> dict | None:
    """The numerics metrics (accuracy; for training the loss deviation and gradient cosine) an earlier
    trial measured for the same numerics, or None."""
    earlier = _earlier_complete(study, config, ignoring=NUMERICS_FREE)
    if earlier is None:
        return None
    return {k: v for k, v in earlier.user_attrs["metrics"].items() if k in NUMERICS_METRICS}


def _earlier_complete(study, config: dict, ignoring: tuple = ()):
    """An earlier complete, measured trial whose canonical configuration equals this one's, knobs in
    `ignoring` aside; None when there is none."""
    def key(c: dict) -> dict:
        return {k: v for k, v in knobs.canonical(c).items() if k not in ignoring}

    target = key(config)
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and "metrics" in t.user_attrs and key(t.params) == target:
            return t
    return None


def _notify(listeners: list, event: str, *args) -> None:
    for listener in listeners:
        handler = getattr(listener, event, None)
        if handler is not None:
            handler(*args)


def records(study) -> list[TrialRecord]:
    """The study's trials that started (queued warm-start trials a search did not reach are left out)."""
    remeasured = study.user_attrs.get("remeasured", {})
    out = [TrialRecord.from_optuna(t) for t in study.trials if t.state.name != "WAITING"]
    for t in out:
        t.remeasured = remeasured.get(str(t.number))
    return out


def pareto_front(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Complete trials not dominated in (higher throughput, lower accuracy drop)."""
    done = [t for t in trials if t.state == COMPLETE and t.reused_from is None]

    def dominates(a: TrialRecord, b: TrialRecord) -> bool:
        ta, tb = a.metrics["throughput"], b.metrics["throughput"]
        da, db = a.metrics["accuracy_drop"], b.metrics["accuracy_drop"]
        return ta >= tb and da <= db and (ta > tb or da < db)

    front = [t for t in done if not any(dominates(o, t) for o in done)]
    return sorted(front, key=lambda t: -t.metrics["throughput"])


def ranked_feasible(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible trials by throughput, best first; a configuration appears once (in canonical form).
    The top trials re-measured interleaved at the end of the search come first, ranked by those
    figures (one stretch of the machine's time, so comparable), if they still met the targets there."""
    seen, out = set(), []
    for t in sorted((t for t in trials if t.feasible), key=lambda t: -t.metrics["throughput"]):
        key = tuple(sorted(knobs.canonical(t.config).items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
    confirmed = sorted((t for t in out if t.remeasured and t.remeasured.get("feasible")),
                       key=lambda t: -t.remeasured["throughput"])
    return confirmed + [t for t in out if t not in confirmed]


def speedup(trial: TrialRecord, reference: TrialRecord | None) -> float | None:
    """Throughput relative to the reference: the median of per-round ratios from the interleaved
    re-measurement when both took part in it, else the ratio of their figures in the search."""
    if reference is None:
        return None
    if trial.remeasured and reference.remeasured:
        return trial.remeasured["speedup"] / reference.remeasured["speedup"]
    return trial.metrics["throughput"] / reference.metrics["throughput"]


def closest_infeasible(trials: list[TrialRecord], targets: Targets) -> TrialRecord | None:
    """The measured trial (complete, or stopped past a target) that misses the targets by the least
    (sum of relative excesses)."""
    def excess(t: TrialRecord) -> float:
        return sum(max(0.0, v) / (targets.bound(k) or 1.0) for k, v in t.constraints.items())

    done = [t for t in trials if t.constraints]
    return min(done, key=excess) if done else None
