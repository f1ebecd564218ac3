"""What a search found: trial records rebuilt from the Optuna study, and the rules that rank them.

Each trial's outcome lives in Optuna's storage (value, constraints, user attrs "metrics" and
"reason"), so a `TrialRecord` can be rebuilt from any study; the ranking, the Pareto front, the
speedup and the closest miss are plain functions of those records (the CLI, the report, MLflow and
the export read them without importing the search loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..targets import Targets

INTERRUPTED = "interrupted by the user"  # the reason of a trial stopped by Ctrl-C


class TrialState(str, Enum):
    """One spelling of a trial's state everywhere: records, worker results, MLflow tags, the CLI."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"  # cannot run here, or stopped past a target: with its reason
    FAILED = "FAILED"  # crashed, raised, timed out, or was interrupted
    RUNNING = "RUNNING"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    @classmethod
    def of_optuna(cls, state) -> "TrialState":
        return {"COMPLETE": cls.COMPLETE, "PRUNED": cls.PRUNED, "FAIL": cls.FAILED}.get(state.name, cls.RUNNING)


# What the interleaved re-measurement re-times (and the serving memory it measures for trials in a tie).
REMEASURED = ("throughput", "latency_ms_p50", "latency_ms_p95", "serving_rss_mb")
P95_SAME = 0.1  # tied trials whose p95 latencies are this close (relative) have the same p95: memory decides
# Interleaved rounds share one process, so their spread understates what a fresh process sees: one bundle re-timed in
# fresh processes on the 2-core CI machine moved by up to 25% (issue 28). Closer than this is a tie, whatever the IQRs.
NOISE_FLOOR = 0.03


@dataclass
class TrialRecord:
    number: int
    config: dict
    state: TrialState
    metrics: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    reason: str | None = None
    reference: bool = False
    reused_from: int | None = None
    log_path: str | None = None  # the worker's log while the trial is being reported
    run_id: str | None = None  # the trial's MLflow run, set by the tracker
    remeasured: dict | None = None  # figures of the end-of-search interleaved re-measurement, if any
    curve: str | None = None  # the sampler moved its batch size down (latency_curve), and why
    climb: str | None = None  # the sampler tried the best configuration at a larger batch (sampler._climb)

    @property
    def figures(self) -> dict:
        """The metrics, with the end-of-search interleaved figures in place of the trial's own where it took
        part in that re-measurement: the figures the winner is chosen on, printed and logged as such."""
        if not self.remeasured:
            return self.metrics
        return {**self.metrics, **{k: self.remeasured[k] for k in REMEASURED if k in self.remeasured}}

    def to_dict(self) -> dict:
        """The record as plain data (`--json`)."""
        return {"number": self.number, "state": str(self.state), "feasible": self.feasible, "reference": self.reference,
                "reused_from": self.reused_from, "reason": self.reason, "config": self.config, "metrics": self.metrics,
                "constraints": self.constraints, "remeasured": self.remeasured, "mlflow_run_id": self.run_id,
                "curve": self.curve, "climb": self.climb}

    @property
    def feasible(self) -> bool:
        return self.state == TrialState.COMPLETE and all(v <= 0 for v in self.constraints.values())

    @classmethod
    def from_optuna(cls, trial) -> "TrialRecord":
        from ..study.attrs import TrialAttrs

        state, kept = TrialState.of_optuna(trial.state), TrialAttrs.of(trial)
        return cls(
            number=trial.number,
            config=dict(trial.params),
            state=state,
            metrics=dict(kept.metrics or {}),
            constraints=dict((trial.constraints if state == TrialState.COMPLETE else kept.constraints) or {}),
            reason=kept.reason, reference=kept.reference, reused_from=kept.reused_from, run_id=kept.mlflow_run_id,
            curve=kept.curve, climb=kept.climb,
        )


def frozen_feasible(trial) -> bool:
    """An Optuna FrozenTrial that completed within every constraint (TrialRecord.feasible, without a record)."""
    return trial.state.name == "COMPLETE" and all(v <= 0 for v in (trial.constraints or {}).values())


def records(study) -> list[TrialRecord]:
    """The study's trials that started (queued warm-start trials a search did not reach are left out)."""
    from ..study.attrs import remeasured as remeasured_figures

    remeasured = remeasured_figures(study)
    out = [TrialRecord.from_optuna(t) for t in study.trials if t.state.name != "WAITING"]
    for t in out:
        t.remeasured = remeasured.get(str(t.number))
    return out


def trials_dataframe(trials: list[TrialRecord]):
    """A pandas DataFrame, one row per trial: number, state, feasibility, reference, reuse and reason, then
    every knob, then every metric (a metric named like a knob, `threads`, is the knob's column), then the
    end-of-search re-measured figures as `remeasured_*`."""
    import pandas as pd

    knob_names = list(dict.fromkeys(k for t in trials for k in t.config))
    rows = []
    for t in trials:
        row = {"trial": t.number, "state": str(t.state), "feasible": t.feasible, "reference": t.reference,
               "reused_from": t.reused_from, "reason": t.reason, **{k: t.config.get(k) for k in knob_names}}
        row.update({k: v for k, v in t.metrics.items() if k not in knob_names})
        row.update({f"remeasured_{k}": v for k, v in (t.remeasured or {}).items() if k in REMEASURED})
        rows.append(row)
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def reference_of(trials: list[TrialRecord]) -> TrialRecord | None:
    """The inference reference: the complete trial with every knob at its baseline."""
    return next((t for t in trials if t.reference and t.state == TrialState.COMPLETE), None)


def pareto_front(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Complete trials not dominated in (higher throughput, lower accuracy drop)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.reused_from is None]

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
    from .. import knobs

    seen, out = set(), []
    for t in sorted((t for t in trials if t.feasible), key=lambda t: -t.metrics["throughput"]):
        key = tuple(sorted(knobs.canonical(t.config).items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
    confirmed = sorted((t for t in out if t.remeasured and t.remeasured.get("feasible")),
                       key=lambda t: -t.remeasured["throughput"])
    won = tie_of(confirmed)
    if won is not None:
        confirmed.remove(won.winner)
        confirmed.insert(0, won.winner)
    return confirmed + [t for t in out if t not in confirmed]


def winning_tie(trials: list[TrialRecord]) -> Tie | None:
    """The tie the best feasible trial (ranked_feasible's first) won, or None."""
    confirmed = sorted((t for t in ranked_feasible(trials) if t.remeasured and t.remeasured.get("feasible")),
                       key=lambda t: -t.remeasured["throughput"])
    return tie_of(confirmed)


def tied(a: TrialRecord, b: TrialRecord) -> bool:
    """Throughputs equal within the machine's noise: the interquartile ranges of the two trials' per-round
    speedups (each round's throughput over the reference's, in the interleaved re-measurement) overlap, or their
    medians are under NOISE_FLOOR apart."""
    x, y = a.remeasured or {}, b.remeasured or {}
    if "speedup_q25" not in x or "speedup_q25" not in y:
        return False
    close = abs(x["speedup"] - y["speedup"]) <= NOISE_FLOOR * max(x["speedup"], y["speedup"])
    return close or min(x["speedup_q75"], y["speedup_q75"]) >= max(x["speedup_q25"], y["speedup_q25"])


def tie_group(confirmed: list[TrialRecord]) -> list[TrialRecord]:
    """The re-measured trials (fastest first) tied with the fastest one; [] without a tie."""
    group = [t for t in confirmed if t is confirmed[0] or tied(confirmed[0], t)] if confirmed else []
    return group if len(group) > 1 else []


def same_p95(group: list[TrialRecord]) -> list[TrialRecord]:
    """The trials of a tie whose p95 latency is the lowest, within P95_SAME."""
    low = min(t.figures["latency_ms_p95"] for t in group)
    return [t for t in group if t.figures["latency_ms_p95"] <= low * (1 + P95_SAME)]


@dataclass
class Tie:
    """The fastest re-measured trial and those within the noise of it; the winner, as a user would take it."""

    winner: TrialRecord
    fastest: TrialRecord
    members: list
    on: str  # what decided: "p95", "serving memory", "model size", or "throughput" (nothing else differed)

    def describe(self) -> str:
        """One clause for the `Best:` line and the report."""
        w, f = self.winner, self.fastest
        others = ", ".join(str(t.number) for t in self.members if t is not w)
        spread = "; ".join(f"trial {t.number} {t.remeasured['speedup_q25']:.2f}-{t.remeasured['speedup_q75']:.2f}x"
                           for t in self.members)
        head = f"a tie within the noise with trial{'s' if ',' in others else ''} {others} (per-round speedups, " \
               f"interquartile: {spread})"
        if w is f:
            return f"{head}; the fastest stays: its p95, serving memory and model file are no worse"
        if self.on == "p95":
            why = f"its lower p95, {w.figures['latency_ms_p95']:.2f} ms vs {f.figures['latency_ms_p95']:.2f} ms"
        elif self.on == "serving memory":
            why = (f"its lower serving memory, {w.figures['serving_rss_mb']:,.0f} MB vs "
                   f"{f.figures['serving_rss_mb']:,.0f} MB (p95 within {P95_SAME:.0%})")
        else:
            why = (f"its smaller model file, {w.metrics['model_size_mb']:.2f} MB vs {f.metrics['model_size_mb']:.2f} MB "
                   f"(p95 within {P95_SAME:.0%}, serving memory not lower)")
        return f"{head}; taken over the fastest, trial {f.number}, for {why}"


def tie_of(confirmed: list[TrialRecord]) -> Tie | None:
    """The tie at the top of the re-measured trials (ranked by throughput), broken as a user would: the lower p95,
    then the lower serving memory, then the smaller model file. None when the fastest stands alone."""
    group = tie_group(confirmed)
    if not group:
        return None
    pool = same_p95(group)
    inf = float("inf")

    def memory(t: TrialRecord) -> float:
        value = t.figures.get("serving_rss_mb")
        return inf if value is None else value

    def size(t: TrialRecord) -> float:
        return t.metrics.get("model_size_mb", inf)

    winner = min(pool, key=lambda t: (memory(t), size(t)))  # min keeps the first (fastest) among equals
    fastest = group[0]
    if fastest not in pool:
        on = "p95"
    elif memory(winner) < memory(fastest):
        on = "serving memory"
    elif size(winner) < size(fastest):
        on = "model size"
    else:
        on = "throughput"
    return Tie(winner, fastest, group, on)


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
