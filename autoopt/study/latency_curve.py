"""Which batch sizes cannot meet --target-latency, from what the study measured.

Latency is monotone in batch size for a fixed configuration of everything else, and close to linear
past small batches. So, per configuration family (every knob but batch size and threads):

- a batch at least as large as one that measured CERTAIN_MARGIN x over the target (same threads) is
  over it too: latency does not fall as the batch grows;
- a batch whose latency, extrapolated linearly from the family's fastest samples/s point, is
  LINEAR_MARGIN x over the target cannot meet it (batching helps, but not by that much);
- a family not measured yet is extrapolated from the fastest samples/s point of the whole study, with
  the same margin: its large batches open up once it has been measured at a smaller one.

A batch size between two measured ones is never excluded unless these say so. The sampler moves an
excluded batch size down to the largest one the curve allows (sampler.ValidConfigSampler) and says so
on the trial; enqueued trials (the reference, the warm start) are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CERTAIN_MARGIN = 1.25  # a measured p95 this far over the target is over it, timing noise included
LINEAR_MARGIN = 2.0  # what the extrapolation must exceed the target by (the done-when of issue 17)


def family(config: dict) -> tuple:
    """The configuration without batch size and threads, in canonical form (knobs that change nothing
    do not split a family)."""
    from .. import knobs

    return tuple(sorted((k, v) for k, v in knobs.canonical(config).items() if k not in ("batch_size", "threads")))


@dataclass(frozen=True)
class Point:
    batch: int
    threads: int | None
    p95_ms: float
    trial: int

    @property
    def per_sample_ms(self) -> float:
        return self.p95_ms / self.batch


class LatencyCurves:
    """The study's measured latency by family, and what it rules out under `target_ms`."""

    def __init__(self, records, target_ms: float):
        self.target_ms = target_ms
        self.points: dict[tuple, list[Point]] = {}
        for r in records:
            p95 = r.metrics.get("latency_ms_p95") or r.metrics.get("screen_latency_ms_p95")
            if p95 and r.config.get("batch_size"):
                point = Point(int(r.config["batch_size"]), r.config.get("threads"), float(p95), r.number)
                self.points.setdefault(family(r.config), []).append(point)
        every = [p for points in self.points.values() for p in points]
        self.fastest = min(every, key=lambda p: p.per_sample_ms, default=None)

    def largest_batch(self, config: dict) -> tuple[int | None, str | None]:
        """The largest batch size the curve lets `config`'s family and threads take (None: no bound;
        0: none) and why."""
        points = self.points.get(family(config), [])
        bound, why = math.inf, None
        over = [p for p in points if p.threads == config.get("threads") and p.p95_ms > CERTAIN_MARGIN * self.target_ms]
        if over:
            p = min(over, key=lambda p: p.batch)
            bound, why = p.batch - 1, (f"#{p.trial} measured p95 {p.p95_ms:.2f} ms at batch {p.batch}, over the "
                                       f"{self.target_ms:g} ms target, and latency does not fall as the batch grows")
        base = min(points, key=lambda p: p.per_sample_ms, default=None) or self.fastest
        if base is not None:
            linear = LINEAR_MARGIN * self.target_ms / base.per_sample_ms
            if linear < bound:
                whose = "this family's" if points else "the study's (this family is not measured yet)"
                bound, why = linear, (f"{whose} fastest point, #{base.trial} ({base.per_sample_ms:.3f} ms a sample at "
                                      f"batch {base.batch}), puts a larger batch past {LINEAR_MARGIN:g}x the "
                                      f"{self.target_ms:g} ms target")
        return (None, None) if bound == math.inf else (max(math.floor(bound), 0), why)
