"""`autoopt search --dry-run`: what a search would do, without running a trial or opening a store.

The resolved space (after the machine's notes and `--export`), how many distinct configurations it
holds (knobs that change nothing in a configuration ignored, combinations that cannot work left out,
as the sampler sees them), the warm-start configurations and the budget.
(Named planning.py, not plan.py: a submodule named `plan` would shadow the `autoopt.plan()` function.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

ENUMERATED = 64  # a numeric domain with more values than this multiplies the count instead of being enumerated


@dataclass
class SearchPlan:
    pipeline: str
    task: str
    device: str
    space_source: str
    domains: dict[str, str]  # knob -> its domain, as the study will search it
    notes: list[str]  # values dropped or added for this machine
    distinct_configurations: float  # math.inf where a domain is continuous
    counted_as_independent: list[str]  # large numeric domains multiplied in, not enumerated
    warm_start: list[dict]  # the known-good configurations tried right after the reference
    trials: int
    timeout_s: float | None
    jobs: int
    patience: int | None = None
    targets: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        if math.isinf(self.distinct_configurations):
            out["distinct_configurations"] = None  # JSON has no infinity: continuous
        return out


def values(domain) -> list | None:
    """Every value of a domain, or None when it has more than ENUMERATED (or infinitely many)."""
    if domain.choices is not None:
        return list(domain.choices)
    if domain.step is None and not _integer(domain):
        return None
    step = domain.step or 1
    count = int(round((domain.high - domain.low) / step)) + 1
    if count > ENUMERATED:
        return None
    return [domain.low + i * step for i in range(count)]


def _integer(domain) -> bool:
    from .. import knobs

    return knobs.REGISTRY[domain.name].integer


def _size(domain) -> float:
    if domain.step is None and not _integer(domain):
        return math.inf
    return math.floor((domain.high - domain.low) / (domain.step or 1)) + 1


def count_distinct(space, device: str) -> tuple[float, list[str]]:
    """(distinct valid configurations, the large domains counted as independent factors). Those are
    the numeric knobs such as batch_size: relevant in every configuration, so they multiply the count."""
    from .. import knobs

    enumerated = {name: v for name, d in space.domains.items() if (v := values(d)) is not None}
    large = [name for name in space.domains if name not in enumerated]
    reference = space.reference_config()
    seen = set()
    names = list(enumerated)
    for combo in itertools.product(*(enumerated[n] for n in names)):
        config = {**reference, **dict(zip(names, combo))}
        if any(config.get(k) != v for k, v in space.required.items()) and config != reference:
            continue
        if space.conflict(config, device):
            continue
        seen.add(tuple(sorted(knobs.canonical(config).items(), key=lambda kv: kv[0])))
    total = float(len(seen))
    for name in large:
        total *= _size(space.domains[name])
    return total, large
