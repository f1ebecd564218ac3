"""What the search keeps on Optuna's trials and study (user_attrs), each under one name: typed reads, checked
writes. Optuna's attributes are spelled in this module only (tests/test_package.py holds it to that)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrialAttrs:
    """A trial's user_attrs, read."""

    metrics: dict | None = None  # what the worker measured (a complete trial, or a pruned one past a target)
    constraints: dict | None = None  # a pruned trial's (a complete trial's are Optuna's own constraints)
    reason: str | None = None  # why it was pruned or failed
    pruned_scope: dict | None = None  # the configurations a build-time failure covers (knobs.in_scope)
    reference: bool = False  # the baseline configuration every speedup is measured against
    warm_start: bool = False  # enqueued by the warm start, not drawn by the sampler
    reused_from: int | None = None  # an identical earlier trial whose figures it took
    mlflow_run_id: str | None = None
    curve: str | None = None  # how the latency curve moved its batch size (sampler notes)
    climb: str | None = None  # the step from the best trial it is (sampler notes)
    owner: dict | None = None  # {host, pid, since}: the search process running it
    heartbeat: float | None = None  # the owner's last sign of life (time.time())

    @classmethod
    def of(cls, trial) -> TrialAttrs:
        """The attributes of an Optuna trial (FrozenTrial or Trial)."""
        stored = trial.user_attrs
        return cls(**{name: stored[name] for name in KEYS if name in stored})


KEYS = tuple(f.name for f in fields(TrialAttrs))


def _checked(values: dict) -> dict:
    unknown = set(values) - set(KEYS)
    if unknown:  # a misspelt key would be stored and never read back
        raise TypeError(f"not a trial attribute: {', '.join(sorted(unknown))} (TrialAttrs has {', '.join(KEYS)})")
    return values


def record(trial, **values) -> None:
    """Keep `values` (TrialAttrs fields) on a running Optuna trial."""
    for key, value in _checked(values).items():
        trial.set_user_attr(key, value)


def record_by_number(storage, study, number: int, **values) -> None:
    """Keep `values` on trial `number` of `study` through its storage: for a trial this process does not run
    (another process abandoned it)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    # Optuna's public storage API: a FrozenTrial keeps its storage id private
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    for key, value in _checked(values).items():
        storage.set_trial_user_attr(trial_id, key, value)


def enqueue(study, params: dict, **values) -> None:
    """Queue a trial of `params` with `values` (TrialAttrs fields) on it."""
    study.enqueue_trial(params, user_attrs=_checked(values))


# The study's own attributes.
_SIGNATURE, _REMEASURED, _META = "search", "remeasured", "autoopt"


def signature(study) -> dict | None:
    """What the study's trials were measured against (storage.search_signature), None for a new study."""
    return study.user_attrs.get(_SIGNATURE)


def set_signature(study, value: dict) -> None:
    study.set_user_attr(_SIGNATURE, value)


def remeasured(study) -> dict:
    """{str(trial number): figures} of the end-of-search interleaved re-measurement."""
    return study.user_attrs.get(_REMEASURED, {})


def set_remeasured(study, figures: dict) -> None:
    study.set_user_attr(_REMEASURED, figures)


def meta(study, host: str | None = None) -> dict:
    """The meta of the search process on `host`, else the latest search's (storage.begin_search)."""
    return study.user_attrs.get(f"{_META}@{host}") or study.user_attrs.get(_META, {})


def set_meta(study, host: str, value: dict) -> None:
    study.set_user_attr(f"{_META}@{host}", value)
    study.set_user_attr(_META, value)  # the latest search's, for studies of one machine
