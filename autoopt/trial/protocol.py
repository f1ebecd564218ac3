"""The trial protocol between the search process and its workers: one request in, one result out.

A request is one of four frozen dataclasses, one per task: an inference trial (`InferRequest`), a training-step
trial (`TrainRequest`), the end-of-search interleaved re-measurement (`RemeasureRequest`) and the serving memory
of a configuration in a worker of its own (`ServeRequest`); what every task needs (where and how to run) is the
`TrialRequest` they extend. Requests and results travel as JSON (`asdict` one way, the task's constructor the
other), so a field added here is a field every side sees, and a misspelt one fails at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from ..report.results import TrialState
from ..targets import Targets


@dataclass(frozen=True)
class TrialRequest:
    """What every task of a worker needs: the pipeline, the device and how long timed calls last."""

    TASK: ClassVar[str] = ""

    device: str
    threads: int  # the default intra-op threads (a configuration's `threads` knob overrides it)
    min_time_s: float
    pipeline: str | None = None  # the pipeline file, or None when it travels pickled
    pipeline_pickle: str | None = None  # an in-memory pipeline, cloudpickled
    min_calls: int = 20
    config: dict = field(default_factory=dict)  # the configuration it builds (remeasure: `configs`)
    accuracy_floor: float | None = None  # inference: the lowest metric within --max-accuracy-drop (int8_layers=auto)
    trial: int | None = None
    workdir: str = ""

    @property
    def task(self) -> str:
        return self.TASK

    def for_trial(self, task: str | None = None, **changes) -> TrialRequest:
        """This request with `changes`; with `task`, a request of that task carrying the fields it shares with
        this one (an inference search's request becomes the re-measurement's)."""
        if task is None or task == self.TASK:
            return replace(self, **changes)
        kind = REQUESTS[task]
        shared = {f.name for f in fields(kind)} & {f.name for f in fields(self)}
        return kind(**{**{name: getattr(self, name) for name in shared}, **changes})

    def to_json(self) -> str:
        return json.dumps({"task": self.TASK, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> TrialRequest:
        data = json.loads(text)
        kind = REQUESTS.get(data.pop("task", None))
        if kind is None:
            raise TypeError(f"a request names no task of {sorted(REQUESTS)}")
        if isinstance(data.get("targets"), dict):
            data["targets"] = Targets(**data["targets"])
        return kind(**data)


@dataclass(frozen=True)
class InferRequest(TrialRequest):
    """An inference trial: build, time, check accuracy; stopped once it is past a target (targets judges)."""

    TASK: ClassVar[str] = "infer"

    targets: Targets = field(default_factory=Targets)
    early_stop: bool = False  # stop a trial already past the latency target
    screen_throughput: float | None = None  # a short timing below this stops the trial: not a contender
    known_numerics: dict | None = None  # accuracy measured before for the same numerics
    reference: bool = False  # the yardstick: measured in full whatever the serving memory (infeasible past it)


@dataclass(frozen=True)
class TrainRequest(TrialRequest):
    """A training-step trial: build, one step's memory (stopped past the target), time, compare the numerics."""

    TASK: ClassVar[str] = "train"

    targets: Targets = field(default_factory=lambda: Targets(memory_basis="growth"))
    reference_numerics: dict | None = None  # the reference's losses and gradient file
    known_numerics: dict | None = None  # training numerics measured before for the same numerics


@dataclass(frozen=True)
class RemeasureRequest(TrialRequest):
    """The end of a search: `configs` timed interleaved (A B A B ...) in one process."""

    TASK: ClassVar[str] = "remeasure"

    configs: list = field(default_factory=list)
    rounds: int = 0
    round_time_s: float = 0.0


@dataclass(frozen=True)
class ServeRequest(TrialRequest):
    """The serving memory of `config` served through autoopt in Python, in a worker of its own."""

    TASK: ClassVar[str] = "serve"


REQUESTS = {kind.TASK: kind for kind in (InferRequest, TrainRequest, RemeasureRequest, ServeRequest)}


@dataclass(frozen=True)
class TrialResult:
    state: TrialState  # COMPLETE, PRUNED or FAILED
    reason: str | None = None
    metrics: dict = field(default_factory=dict)
    scope: dict | None = None  # a build-time Unsupported: the knob values it rules out
    log_path: str | None = None  # the worker's log of this trial (set by the search process)

    @classmethod
    def complete(cls, metrics: dict, note: str | None = None) -> "TrialResult":
        """`note`: what the user should know about a measured trial (its reason: few distillation data)."""
        return cls(TrialState.COMPLETE, note, metrics)

    @classmethod
    def pruned(cls, reason: str, metrics: dict | None = None, scope: dict | None = None) -> "TrialResult":
        return cls(TrialState.PRUNED, reason, dict(metrics or {}), scope or None)

    @classmethod
    def failed(cls, reason: str) -> "TrialResult":
        return cls(TrialState.FAILED, reason)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        data = json.loads(text)
        return cls(**{**data, "state": TrialState(data["state"])})
