"""The search process's side of the workers: the base trial request, one worker per job, the
`evaluate(config, number)` functions the study loop calls, and the interleaved re-measurement of the
best trials at the end of a search."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import attrs
from .attrs import TrialAttrs
from ..machine import available_cores
from ..options import SearchOptions
from ..trial.protocol import REQUESTS, TrialResult
from ..report.results import TrialRecord, TrialState, ranked_feasible, records, reference_of, same_p95, tie_group
from .loop import known_numerics
from ..trial.worker import Worker

log = logging.getLogger("autoopt")
REMEASURE_ROUNDS = 10
# A contender must reach this share of the best feasible throughput in its short timing (candidate._screen):
# a few calls after a short warm-up can read well below a full timing on a busy 2-core machine, and a trial
# at 70% of the best is no candidate for the end-of-search re-measurement's top places.
SCREEN_SHARE = 0.7


class Runner:
    """Owns a temporary directory (trial work, worker logs, the report) and the workers; a context
    manager that stops every worker on exit."""

    def __init__(self, pipe, options: SearchOptions, reference_accuracy: float | None, study):
        self._dir = tempfile.TemporaryDirectory(prefix="autoopt-")
        self.tmp = Path(self._dir.name)
        self.options, self.study, self.reference_accuracy = options, study, reference_accuracy
        # The search's task's request; the re-measurement and serving take theirs from it (for_trial(task=...)).
        self.request = REQUESTS[options.task](
            device=options.device, threads=available_cores(), min_time_s=options.min_time_s,
            pipeline=pipe.source, pipeline_pickle=_pickle_if_needed(pipe, self.tmp), targets=options.targets,
            accuracy_floor=(reference_accuracy - options.targets.max_accuracy_drop
                            if options.task == "infer" and reference_accuracy is not None else None),
        )
        if options.task == "train":
            from ..trial.training import reference_numerics

            self.request = self.request.for_trial(reference_numerics=reference_numerics(pipe, options.device,
                                                                                        str(self.tmp)))
        else:
            self.request = self.request.for_trial(early_stop=options.early_stop)
        self.workers = [Worker(str(self.tmp), reuse=not options.fresh_workers) for _ in range(options.jobs)]

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.close()
        self._dir.cleanup()

    def interrupt(self) -> None:
        """Ctrl-C: stop the running trials (each raises KeyboardInterrupt in its job thread)."""
        for worker in self.workers:
            worker.interrupt()

    def evaluators(self) -> list[Callable[[dict, int], TrialResult]]:
        return [self._evaluator(worker) for worker in self.workers]

    def _screen_throughput(self, number: int) -> float | None:
        if self.options.task != "infer" or not (self.options.screen and self.options.early_stop):
            return None  # --no-screen, --no-early-stop: every trial timed fully
        from ..runtimes import FORMATS

        shipped = FORMATS[self.options.export] if self.options.export else None
        return contender_bar(self.study.get_trials(deepcopy=False), number, shipped)

    def _is_reference(self, number: int) -> bool:
        return any(t.number == number and TrialAttrs.of(t).reference for t in self.study.get_trials(deepcopy=False))

    def _evaluator(self, worker: Worker) -> Callable[[dict, int], TrialResult]:
        def evaluate(config: dict, number: int) -> TrialResult:
            work = self.tmp / f"trial-{number}"
            work.mkdir()
            inference = {"screen_throughput": self._screen_throughput(number), "reference": self._is_reference(number)}
            request = self.request.for_trial(config=config, trial=number, known_numerics=known_numerics(self.study, config),
                                             **(inference if self.options.task == "infer" else {}))
            result = worker.run(request, str(work), self.options.trial_timeout_s)
            if result.state == TrialState.COMPLETE and self.options.task == "infer":
                drop = self.reference_accuracy - result.metrics["accuracy"]
                result = dataclasses.replace(result, metrics={**result.metrics, "accuracy_drop": drop})
            return dataclasses.replace(result, log_path=str(work / "worker.log"))
        return evaluate

    def remeasure(self, trials: list[TrialRecord]) -> None:
        """Re-time the reference and the `remeasure_top` best feasible trials interleaved; store the
        figures on the study (user attr "remeasured"), where the ranking and the export find them."""
        reference = reference_of(trials)
        candidates = [t for t in ranked_feasible(trials) if t is not reference][:self.options.remeasure_top]
        if reference is None or not candidates:
            return
        chosen = [reference, *candidates]
        log.info("Re-measuring the reference and the top %d trials interleaved (%d rounds)…", len(candidates),
                 REMEASURE_ROUNDS)
        work = self.tmp / "remeasure"
        work.mkdir()
        # A worker of its own, started from this thread: a worker dies with the thread that started it
        # (PR_SET_PDEATHSIG), and the job threads are gone by now.
        worker = Worker(str(self.tmp))
        try:
            request = self.request.for_trial(task="remeasure", configs=[t.config for t in chosen],
                                             rounds=REMEASURE_ROUNDS,
                                             round_time_s=max(0.05, self.options.min_time_s / 5))
            result = worker.run(request, str(work), self.options.trial_timeout_s)
        finally:
            worker.close()
        if result.state != TrialState.COMPLETE:
            log.warning("The interleaved re-measurement failed (%s): the search's own figures stand.", result.reason)
            return
        if result.metrics.get("settle_ms_max", 0) > 20:
            log.info("A candidate's threads kept the cores busy up to %.0f ms after its turn; each turn waited for "
                     "them to go quiet.", result.metrics["settle_ms_max"])
        figures = {}
        for t, fig in zip(chosen, result.metrics["figures"]):
            fig["feasible"] = self.options.targets.meets(fig)  # its latency, timed again
            figures[str(t.number)] = fig
        attrs.set_remeasured(self.study, figures)
        self._serving_for_tie(figures)

    def _serving_for_tie(self, figures: dict) -> None:
        """Trials tied on throughput and on p95 are told apart by their serving memory: measure it (serving.py)
        for those whose trial did not (no memory target), each in a worker of its own."""
        trials = records(self.study)
        confirmed = sorted((t for t in trials if t.feasible and t.remeasured and t.remeasured["feasible"]),
                           key=lambda t: -t.remeasured["throughput"])
        group = tie_group(confirmed)
        pool = same_p95(group) if group else []
        for t in (t for t in pool if len(pool) > 1 and t.figures.get("serving_rss_mb") is None):
            work = self.tmp / f"serving-{t.number}"
            work.mkdir()
            worker = Worker(str(self.tmp), reuse=False)
            try:
                result = worker.run(self.request.for_trial(task="serve", config=t.config, trial=t.number), str(work),
                                    self.options.trial_timeout_s)
            finally:
                worker.close()
            if result.state == TrialState.COMPLETE:
                figures[str(t.number)]["serving_rss_mb"] = result.metrics["serving_rss_mb"]
            else:
                log.warning("The serving memory of trial %d could not be measured (%s).", t.number, result.reason)
        attrs.set_remeasured(self.study, figures)


def contender_bar(trials, number: int, runtime: str | None = None) -> float | None:
    """What trial `number`'s short timing must reach to be timed fully: SCREEN_SHARE of the best feasible
    trial so far (of `runtime`, the one --export ships, when given: the reference cannot be the answer
    there). None (no screening) for the reference, or before such a trial exists."""
    if any(t.number == number and TrialAttrs.of(t).reference for t in trials):
        return None
    done = [TrialRecord.from_optuna(t) for t in trials if t.state.name == "COMPLETE"]
    best = ranked_feasible([t for t in done if runtime is None or t.config.get("compile_mode") == runtime])
    return SCREEN_SHARE * best[0].metrics["throughput"] if best else None


def _pickle_if_needed(pipe, tmp: Path) -> str | None:
    """A pipeline built in memory (not loaded from a file) travels to the worker by value."""
    if pipe.source:
        return None
    import cloudpickle

    # Functions from a module the worker cannot import by name (a loaded pipeline file, __main__,
    # a notebook) must travel by value, not as a reference to that module.
    for fn in (pipe.build_model, pipe.make_inputs, pipe.evaluate, pipe.calibration_data, pipe.build_reference):
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if module is not None and module.__name__ != "builtins" and not _importable(module.__name__):
            cloudpickle.register_pickle_by_value(module)
    path = os.path.join(tmp, "pipeline.pkl")
    with open(path, "wb") as f:
        cloudpickle.dump(pipe, f)
    return path


def _importable(name: str) -> bool:
    """Whether a fresh process could import this module by name (sys.modules does not count)."""
    import importlib.machinery

    top = name.partition(".")[0]
    if name == "__main__":
        return False
    return top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(top) is not None
