"""The trial protocol between the search process and its workers: one request in, one result out.

Both are frozen dataclasses that travel as JSON (`asdict` one way, the constructor the other), so a
field added here is a field every side sees, and a misspelt one fails at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from ..report.results import TrialState


@dataclass(frozen=True)
class TrialRequest:
    """What a worker needs to run one trial ("infer", "train"), the end-of-search "remeasure", or "serve" (the
    serving memory of `config`, in a worker of its own)."""

    task: str
    device: str
    threads: int  # the default intra-op threads (a configuration's `threads` knob overrides it)
    min_time_s: float
    pipeline: str | None = None  # the pipeline file, or None when it travels pickled
    pipeline_pickle: str | None = None  # an in-memory pipeline, cloudpickled
    min_calls: int = 20
    memory_limit_mb: float | None = None  # a trial whose memory growth passes this stops early (PRUNED)
    serving_limit_mb: float | None = None  # measure serving_rss_mb (serving.py); a trial past this is PRUNED
    latency_limit_ms: float | None = None  # set when early stopping is on (inference)
    screen_throughput: float | None = None  # a short timing below this stops the trial: not a contender
    reference_numerics: dict | None = None  # training: the reference's losses and gradient file
    accuracy_floor: float | None = None  # inference: the lowest metric within --max-accuracy-drop (int8_layers=auto)
    config: dict = field(default_factory=dict)
    known_numerics: dict | None = None  # accuracy (or training numerics) measured before for the same numerics
    trial: int | None = None
    reference: bool = False  # the yardstick: measured in full whatever the serving memory (infeasible past it)
    workdir: str = ""
    configs: list = field(default_factory=list)  # remeasure: the configurations to time interleaved
    rounds: int = 0
    round_time_s: float = 0.0

    def for_trial(self, **changes) -> "TrialRequest":
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialRequest":
        return cls(**json.loads(text))


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
