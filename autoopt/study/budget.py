"""The trial budget of a search: which job thread gets the next trial, and when the search ends (the
trial count, --timeout, --patience); heartbeats on this process's running trials."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from . import attrs
from .attrs import TrialAttrs
from ..machine import host_id
from ..report.results import frozen_feasible

ABANDONED = ("abandoned: the search process running it died (killed?) or stopped beating; recovered by a later or "
             "concurrent search of the study")

# A running trial's owner writes a heartbeat this often ($AUTOOPT_HEARTBEAT_S: shorter where machines come and go)
HEARTBEAT_S = float(os.environ.get("AUTOOPT_HEARTBEAT_S", 30.0))
STALE_S = 4 * HEARTBEAT_S  # a trial of another host whose heartbeat is older than this is abandoned
WAIT = object()  # Budget._next: the count is full only while other processes' trials run


class Budget:
    """Hands out trials to the job threads: at most `n_trials` finished plus running in the study."""

    def __init__(self, study, n_trials: int, timeout_s: float | None, patience: int | None = None):
        import threading

        self.before_ask: Callable[[], None] = lambda: None
        # Draws the new trial's configuration while the lock is held: a parallel job that asks next sees it
        # as a running trial with all its values, and never draws the same one (sampler: running trials count).
        self.prepare: Callable[[object], object] = lambda trial: None
        self.recover: Callable[[], None] = lambda: None  # abandoned trials of other processes, checked each beat
        self.study, self.n_trials, self.timeout_s, self.patience = study, n_trials, timeout_s, patience
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.running: dict = {}
        self.told_waiting = False

    def ask(self):
        """The next trial, or None when the search ends. While the count is full only because of trials that
        other processes run, it waits: each either finishes (the study is then complete, and this search's
        report holds it) or stops beating and is recovered, which frees its place for a trial here."""
        while True:
            with self.lock:
                trial = self._next()
                told, self.told_waiting = self.told_waiting, self.told_waiting or trial is WAIT
            if trial is not WAIT:
                return trial
            if not told:  # once per search, not once per job thread
                logging.getLogger("autoopt").info("Waiting for the study's last trials, which other search processes "
                                                  "run; a trial whose process stops beating is recovered and run here.")
            if self.stop.wait(min(HEARTBEAT_S, 1.0)):
                return None

    def _next(self):
        """A new trial, None when the search ends, or WAIT; called with the lock held."""
        if self.stop.is_set() or (self.timeout_s is not None and time.monotonic() - self.started >= self.timeout_s):
            return None
        trials = self.study.get_trials(deepcopy=False)
        # an abandoned trial (its machine died) did not use the budget: another takes its place
        counted = [t for t in trials
                   if (t.state.is_finished() and TrialAttrs.of(t).reason != ABANDONED) or t.state.name == "RUNNING"]
        if len(counted) >= self.n_trials:
            others = any(t.state.name == "RUNNING" and t.number not in self.running for t in counted)
            return WAIT if others else None
        if self.patience is not None and since_best(trials) >= self.patience:
            logging.getLogger("autoopt").info("Stopping: %d trials finished without a better feasible one "
                                              "(--patience %d).", self.patience, self.patience)
            self.stop.set()
            return None
        self.before_ask()
        trial = self.study.ask()
        self.prepare(trial)
        now = time.time()
        attrs.record(trial, owner={"host": host_id(), "pid": os.getpid(), "since": now}, heartbeat=now)
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
                    attrs.record(trial, heartbeat=time.time())
                except Exception:  # noqa: BLE001 - finished meanwhile; a missed beat is harmless
                    pass
            try:
                self.recover()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                logging.getLogger("autoopt").warning("recovering abandoned trials failed: %r", exc)


def since_best(trials) -> int:
    """Trials finished (in the order they finished) after the best feasible one; 0 before there is one."""
    finished = sorted((t for t in trials if t.state.is_finished() and t.datetime_complete is not None),
                      key=lambda t: t.datetime_complete)
    best, since = None, 0
    for t in finished:
        if frozen_feasible(t) and (best is None or t.value > best):
            best, since = t.value, 0
        elif best is not None:
            since += 1
    return since
