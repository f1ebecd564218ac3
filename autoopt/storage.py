"""Where a study lives: Optuna's storage (a journal file beside the MLflow store, or an RDB that several
machines share), and finding a study again by name."""

from __future__ import annotations

import importlib.util
import os
import random
import time
from pathlib import Path

from .errors import ConfigError, option


def open_storage(storage: str | None, store: Path | None):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _postgres_driver_installed() -> bool:
    return any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2"))


def _creation_race(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("integrityerror", "unique", "duplicate", "already exists"))


def load_study(name: str, tracking_uri: str | os.PathLike | None = None, storage: str | None = None):
    """The study `name` from the storage a search with these options used."""
    import optuna

    from .tracking import resolve_store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, store = resolve_store(tracking_uri)
    backend = open_storage(storage, store)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = optuna.get_all_study_names(backend)
        raise ConfigError(f"No study named {name!r} in this storage. Studies: {known}.") from None
