"""The search's progress on the console: a line per finished trial and, on a terminal, a progress bar
with the trials done, the best so far, the time spent and an estimate of the time left."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
from rich.progress import Progress as RichProgress

from .results import TrialState


def _describe(config: dict) -> str:
    from ..knobs import describe  # imports torch: only once a search runs

    return describe(config)


def time_left_s(finished_here: int, elapsed_s: float, remaining: int, timeout_left_s: float | None) -> float | None:
    """Seconds until the budget is spent, at the rate this process has finished trials so far (builds,
    reuse and parallel jobs included), capped by what is left of --timeout. None before a first trial."""
    if remaining <= 0:
        return 0.0
    estimate = remaining * elapsed_s / finished_here if finished_here else None
    if timeout_left_s is not None:
        return max(0.0, timeout_left_s) if estimate is None else min(estimate, max(0.0, timeout_left_s))
    return estimate


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Listener of a search (study.run's events). Called from the job threads (--jobs), hence the lock."""

    def __init__(self, console: Console):
        self.console = console
        self.lock = threading.Lock()
        self.total, self.done, self.here, self.timeout_s = 0, 0, 0, None
        self.best: tuple[float, int] | None = None  # (samples/s, trial number)
        self.started = time.monotonic()
        self.running: dict[int, tuple[float, str]] = {}  # number -> (start, text)
        self.bar = None

    def search_started(self, finished: list, total: int, jobs: int, timeout_s: float | None) -> None:
        with self.lock:
            self.total, self.done, self.timeout_s, self.started = total, len(finished), timeout_s, time.monotonic()
            for record in finished:
                self._note_best(record)
            if self.console.is_terminal:
                self.bar = _Bar(SpinnerColumn(), TextColumn("trials"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), console=self.console, transient=True)
                self.task = self.bar.add_task("search", total=total, completed=self.done, status="")
                self.bar.owner = self
                self.bar.start()

    def search_finished(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    def trial_started(self, record) -> None:
        text = f"#{record.number}{' (reference)' if record.reference else ''}: {escape(_describe(record.config))}"
        with self.lock:
            self.running[record.number] = (time.monotonic(), text)

    def trial_finished(self, record) -> None:
        with self.lock:
            started, _ = self.running.pop(record.number, (time.monotonic(), ""))
            self.done, self.here = self.done + 1, self.here + 1
            new_best = self._note_best(record)
            self._print(record, time.monotonic() - started, new_best)
            if self.bar is not None:
                self.bar.update(self.task, completed=self.done)

    def _note_best(self, record) -> bool:
        if record.state != TrialState.COMPLETE or not record.feasible or "grad_cosine" in record.metrics:
            return False  # a training step's best is the report's: its reference is chosen at the end
        throughput = record.metrics["throughput"]
        if self.best is None or throughput > self.best[0]:
            self.best = (throughput, record.number)
            return True
        return False

    def _time_left(self) -> tuple[float, float | None]:
        elapsed = time.monotonic() - self.started
        return elapsed, time_left_s(self.here, elapsed, self.total - self.done,
                                    None if self.timeout_s is None else self.timeout_s - elapsed)

    def status(self) -> str:
        """best so far, time spent, time left and the running trials: the bar's text."""
        elapsed, left = self._time_left()
        parts = [f"best {self.best[0]:,.0f}/s (#{self.best[1]})" if self.best else "no feasible trial yet",
                 f"{clock(elapsed)} spent", f"~{clock(left)} left" if left is not None else "time left: after a trial"]
        # No lock: rich calls this holding its own, which trial_finished takes holding ours. A snapshot
        # is enough (one C call: no other thread runs during it).
        running = "; ".join(text for _, text in tuple(self.running.values()))
        return " · ".join(parts) + (f" · {running}" if running else "")

    def _print(self, record, seconds: float, new_best: bool) -> None:
        head = f"[{self.done}/{self.total}] #{record.number:<3} {_describe(record.config)}"
        took = f"  [dim]{seconds:.1f} s[/]"
        if record.state == TrialState.COMPLETE:
            m = record.metrics
            mark = "[green]feasible[/]" if record.feasible else "[yellow]infeasible[/]"
            mark += " [bold green]new best[/]" if new_best and self.done > 1 else ""
            reused = f" (same as #{record.reused_from})" if record.reused_from is not None else ""
            if "grad_cosine" in m:  # a training step
                what = (f"step p95 {m['latency_ms_p95']:.1f} ms  {m['throughput']:,.0f} samples/s  "
                        f"mem {m['peak_memory_mb']:.1f} MB  loss dev {m['accuracy_drop']:.4f} grad cos {m['grad_cosine']:.4f}")
            else:
                serving = f"serving {m['serving_rss_mb']:,.0f} MB  " if m.get("serving_rss_mb") else ""
                what = (f"p95 {m['latency_ms_p95']:.2f} ms  {m['throughput']:,.0f}/s  {serving}mem {m['peak_memory_mb']:.1f} MB  "
                        f"acc {m['accuracy']:.4f} (drop {m['accuracy_drop']:+.4f})")
            note = f"  [yellow]note: {escape(record.reason)}[/]" if record.reason else ""
            line = f"{escape(head)}  {what}  {mark}{reused}{took}{note}"
        else:
            color = "yellow" if record.state == TrialState.PRUNED else "red"
            line = f"{escape(head)}  [{color}]{record.state}[/]: {escape(str(record.reason))}{took}"
        if record.curve:  # the full reason is on the trial's MLflow run (autoopt.curve)
            line += f"  [dim]latency curve: {escape(record.curve.split(':')[0])}[/]"
        if record.climb:
            line += f"  [dim]climb: {escape(record.climb)}[/]"
        if self.bar is None and self.done < self.total:  # a log has no bar: the estimate goes on the line
            _, left = self._time_left()
            line += f"  [dim]~{clock(left)} left[/]" if left is not None else ""
        self.console.print(line, highlight=False)


class _Bar(RichProgress):
    """rich's bar, its status text asked of the listener at each refresh (so that the clocks run)."""

    owner: Progress

    def get_renderables(self):
        for task in self.tasks:
            task.fields["status"] = self.owner.status()
        yield from super().get_renderables()
