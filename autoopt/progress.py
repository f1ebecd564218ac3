"""The search's progress on the console: a line per finished trial, the running trials on a terminal."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.markup import escape

from .results import TrialState


def _describe(config: dict) -> str:
    from .knobs import describe  # imports torch: only once a search runs

    return describe(config)


class Progress:
    """Prints one line per finished trial; shows the running trials on a terminal. Called from the
    job threads (--jobs), hence the lock."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.total = total
        self.status = None
        self.running: dict[int, tuple[float, str]] = {}  # number -> (start, text)
        self.lock = threading.Lock()

    def _show(self) -> None:
        if not self.console.is_terminal:
            return
        if not self.running:
            if self.status is not None:
                self.status.stop()
                self.status = None
            return
        text = "; ".join(text for _, text in self.running.values())
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def trial_started(self, record) -> None:
        text = (f"trial {record.number + 1}/{self.total}{' (reference)' if record.reference else ''}: "
                f"{escape(_describe(record.config))}")
        with self.lock:
            self.running[record.number] = (time.monotonic(), text)
            self._show()

    def trial_finished(self, record) -> None:
        with self.lock:
            started, _ = self.running.pop(record.number, (time.monotonic(), ""))
            self._print(record, time.monotonic() - started)
            self._show()

    def _print(self, record, seconds: float) -> None:
        head = f"#{record.number:<3} {_describe(record.config)}"
        took = f"  [dim]{seconds:.1f} s[/]"
        if record.state == TrialState.COMPLETE:
            m = record.metrics
            mark = "[green]feasible[/]" if record.feasible else "[yellow]infeasible[/]"
            reused = f" (same as #{record.reused_from})" if record.reused_from is not None else ""
            if "grad_cosine" in m:  # a training step
                what = (f"step p95 {m['latency_ms_p95']:.1f} ms  {m['throughput']:,.0f} samples/s  "
                        f"mem {m['peak_memory_mb']:.1f} MB  loss dev {m['accuracy_drop']:.4f} grad cos {m['grad_cosine']:.4f}")
            else:
                what = (f"p95 {m['latency_ms_p95']:.2f} ms  {m['throughput']:,.0f}/s  mem {m['peak_memory_mb']:.1f} MB  "
                        f"acc {m['accuracy']:.4f} (drop {m['accuracy_drop']:+.4f})")
            note = f"  [yellow]note: {escape(record.reason)}[/]" if record.reason else ""
            self.console.print(f"{escape(head)}  {what}  {mark}{reused}{took}{note}", highlight=False)
        else:
            color = "yellow" if record.state == TrialState.PRUNED else "red"
            self.console.print(f"{escape(head)}  [{color}]{record.state}[/]: {escape(str(record.reason))}{took}",
                               highlight=False)
