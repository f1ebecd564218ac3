"""The user's targets and how a trial's metrics are judged against them (Optuna constraint values): the one judge
of feasibility, in the study (constraints), in the worker (over: a trial stopped past a target) and at the
end-of-search re-measurement (meets)."""

from __future__ import annotations

from dataclasses import dataclass

GRAD_COSINE_MIN = 0.99  # training: the first step's gradient must point where the reference's does


@dataclass(frozen=True)
class Targets:
    latency_ms: float | None = None  # bound on p95 latency of one batch call (training: of one step)
    memory_mb: float | None = None  # bound on the memory of `memory_basis`
    # "serving": serving_rss_mb, the peak resident memory of a fresh process serving the candidate (serving.py);
    # "growth": peak_memory_mb, what a warm worker gains loading and calling it (training: one step).
    memory_basis: str = "serving"
    max_accuracy_drop: float = 0.01  # training: the relative loss deviation after the numerics steps

    def constraints(self, metrics: dict) -> dict[str, float]:
        """Optuna constraint values: feasible iff every one is <= 0. A trial stopped early has only
        some metrics, hence only some values."""
        out = {}
        if "accuracy_drop" in metrics:
            out["accuracy"] = metrics["accuracy_drop"] - self.max_accuracy_drop
        if "grad_cosine" in metrics:
            out["gradient"] = GRAD_COSINE_MIN - metrics["grad_cosine"]
        if self.latency_ms is not None and "latency_ms_p95" in metrics:
            out["latency"] = metrics["latency_ms_p95"] - self.latency_ms
        if self.memory_mb is not None and self.memory_metric in metrics:
            out["memory"] = metrics[self.memory_metric] - self.memory_mb
        return out

    def over(self, name: str, metrics: dict) -> float | None:
        """How far `metrics` are past target `name` (> 0); None within it, or where they do not measure it."""
        excess = self.constraints(metrics).get(name)
        return excess if excess is not None and excess > 0 else None

    def meets(self, metrics: dict) -> bool:
        """Within every target that `metrics` measure."""
        return all(v <= 0 for v in self.constraints(metrics).values())

    @property
    def serving_mb(self) -> float | None:
        """The memory target, where it bounds serving memory (a fresh process serving the candidate)."""
        return self.memory_mb if self.memory_basis == "serving" else None

    @property
    def memory_metric(self) -> str:
        return "serving_rss_mb" if self.memory_basis == "serving" else "peak_memory_mb"

    @property
    def memory_label(self) -> str:
        return "serving memory" if self.memory_basis == "serving" else "peak memory growth"

    def bound(self, name: str) -> float:
        return {"accuracy": self.max_accuracy_drop, "latency": self.latency_ms, "memory": self.memory_mb,
                "gradient": GRAD_COSINE_MIN}[name]

    def describe_violation(self, name: str, excess: float) -> str:
        bound = self.bound(name)
        share = f" (+{excess / bound:.0%})" if bound else ""
        if name == "latency":
            return f"latency p95 {bound + excess:.2f} ms is over the {bound:g} ms target by {excess:.2f} ms{share}"
        if name == "memory":
            return f"{self.memory_label} {bound + excess:.1f} MB is over the {bound:g} MB target by {excess:.1f} MB{share}"
        if name == "gradient":
            return f"gradient cosine {bound - excess:.4f} vs the reference is under the required {bound:g}"
        return f"accuracy drop {bound + excess:.4f} is over the allowed {bound:g} by {excess:.4f}"

    def describe(self) -> str:
        return ", ".join([f"latency p95 <= {self.latency_ms:g} ms" if self.latency_ms else "no latency target",
                          f"{self.memory_label} <= {self.memory_mb:g} MB" if self.memory_mb else "no memory target",
                          f"accuracy drop <= {self.max_accuracy_drop:g}"])
