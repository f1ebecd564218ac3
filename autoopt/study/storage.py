"""Where a study lives: Optuna's storage (a journal file beside the MLflow store, or an RDB that several
machines share), and finding a study again by name."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from pathlib import Path

from . import attrs
from ..errors import ConfigError, option


def storage_backend(storage: str | None, store: Path | None):
    """An Optuna storage: an RDB URL as given (several machines may share it), else a journal file
    (safe for several processes on one machine), by default `optuna.journal` in the MLflow store."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if storage and "://" in storage:
        if storage.startswith("postgresql") and not _postgres_driver_installed():
            raise ConfigError(f"{option('storage', storage.split('://')[0] + '://…')} needs a PostgreSQL driver, and none is "
                              "installed. Fix: pip install 'psycopg[binary]'.")
        # Machines that start at once on a fresh database race to create Optuna's tables: the loser
        # of that race fails once and finds the tables on its next try.
        for attempt in range(5):
            try:
                return RDBStorage(storage)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors differ by database
                if attempt == 4 or not _creation_race(exc):
                    raise ConfigError(f"{option('storage', storage)}: cannot open it ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0]}).") from exc
                time.sleep(0.5 + random.random())
    path = Path(storage) if storage else (store or Path("mlruns").resolve()) / "optuna.journal"
    _check_journal(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise ConfigError(f"{option('storage', str(path))}: cannot write a journal file there ({exc.strerror or exc}). "
                          "Give a writable path or an RDB URL (sqlite:///..., postgresql://...).") from exc


def _check_journal(path: Path) -> None:
    """An existing journal file must be Optuna's (its first line a journal operation): Optuna itself fails on a
    foreign one only when it first writes, deep in a search, with a JSONDecodeError or a KeyError."""
    where = option("storage", str(path))
    if path.is_dir():
        raise ConfigError(f"{where} is a directory. Expected a journal file (new, or one a search wrote) or an RDB "
                          "URL (sqlite:///..., postgresql://...).")
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new journal
    try:
        with path.open("rb") as f:
            first = json.loads(f.readline())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc}). Fix its permissions, or give "
                          "another path.") from None
    except ValueError:  # not JSON, not UTF-8
        first = None
    if not isinstance(first, dict) or "op_code" not in first:
        raise ConfigError(f"{where} is not an Optuna journal (its first line is not a journal operation). Give a new "
                          "file name, the journal a search wrote, or an RDB URL (sqlite:///...).")


def _postgres_driver_installed() -> bool:
    return any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2"))


def _creation_race(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("integrityerror", "unique", "duplicate", "already exists"))


def load_study(name: str | None, tracking_uri: str | os.PathLike | None = None, storage: str | None = None):
    """The study `name` (None: the latest one, by its first trial's start) from the storage a search with
    these options used."""
    import optuna

    from ..report.tracking import resolve_store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, store = resolve_store(tracking_uri)
    backend = storage_backend(storage, store)
    if name is None:
        started = [s for s in optuna.get_all_study_summaries(backend, include_best_trial=False) if s.datetime_start]
        if not started:
            raise ConfigError(f"No study in this storage yet ({option('storage', storage) if storage else store}). "
                              "Run `autoopt search` first, or point --tracking-uri/--storage at the search's store.")
        name = max(started, key=lambda s: s.datetime_start).study_name
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = optuna.get_all_study_names(backend)
        raise ConfigError(f"No study named {name!r} in this storage. Studies: {known}.") from None


def search_signature(space, targets, task: str, device: str) -> dict:
    """What a study's trials were measured against: resuming or joining it with anything else mixes them."""
    return {"task": task, "device": device,
            "targets": {"latency_ms": targets.latency_ms, "memory_mb": targets.memory_mb,
                        "memory_basis": targets.memory_basis if targets.memory_mb is not None else None,
                        "max_accuracy_drop": targets.max_accuracy_drop},
            "space": {name: domain.describe() for name, domain in space.domains.items()}}


_TARGET_OPTIONS = {"latency_ms": ("target_latency", "{:g}ms"), "memory_mb": ("target_memory", "{:g}MB"),
                   "memory_basis": ("memory_basis", "{}"),
                   "max_accuracy_drop": ("max_accuracy_drop", "{:g}")}


def check_resume(study, signature: dict, space_source: str) -> None:
    """Record the signature on a new study; on an existing one, a ConfigError naming the first difference
    (its stored constraints were computed against the old targets, its sampler knows the old space)."""
    stored = attrs.signature(study)
    if stored is None:
        attrs.set_signature(study, signature)
        return
    fix = f"Resume it with the same settings, or start a new study with {option('study', 'NEW_NAME')}."
    name = study.study_name
    for key in ("task", "device"):
        if stored[key] != signature[key]:
            raise ConfigError(f"Study {name} was searched with {option(key, stored[key])}; this run asks for "
                              f"{option(key, signature[key])}. {fix}")
    for key, (flag, fmt) in _TARGET_OPTIONS.items():
        old, new = stored["targets"].get(key), signature["targets"][key]
        if old != new:
            was, now = (option(flag, fmt.format(v)) if v is not None else f"no {option(flag)}" for v in (old, new))
            raise ConfigError(f"Study {name} was searched with {was}; this run asks for {now}: its trials' "
                              f"feasibility was judged against the old targets. {fix}")
    for knob in sorted(set(stored["space"]) | set(signature["space"])):
        old, new = stored["space"].get(knob), signature["space"].get(knob)
        if old != new:
            raise ConfigError(f"Study {name} searched {knob} in {old or 'nothing'}; this run gives {new or 'nothing'} "
                              f"(from {space_source}, {option('export')} and what this machine can run). {fix}")


def begin_search(study, meta: dict) -> None:
    """A search process starts on `study`: what a later export needs from it (pipeline file, MLflow store, parent
    run) is kept per host (machines sharing a study each have their own store, and the last writer must not win);
    the figures of an earlier run's re-measurement are stale now."""
    from ..machine import host_id

    attrs.set_remeasured(study, {})
    attrs.set_meta(study, host_id(), meta)


def search_meta(study, host: str | None = None) -> dict:
    """The meta of the search process on `host` (the one that ran a trial), else the latest search's."""
    return attrs.meta(study, host)


def trial_meta(study, trial) -> dict:
    """The search meta of the host that ran `trial` (a TrialRecord), with that host's name as "host"."""
    host = (attrs.TrialAttrs.of(study.get_trials(deepcopy=False)[trial.number]).owner or {}).get("host")
    return {**search_meta(study, host), "host": host or "unknown"}
