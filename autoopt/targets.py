"""The user's targets and how a trial's metrics are judged against them (Optuna constraint values)."""

from __future__ import annotations

from dataclasses import dataclass

GRAD_COSINE_MIN = 0.99  # training: the first step's gradient must point where the reference's does


@dataclass(frozen=True)
class Targets:
    latency_ms: float | None = None  # bound on p95 latency of one batch call (training: of one step)
    memory_mb: float | None = None  # bound on peak memory (training: of one step)
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
        if self.memory_mb is not None and "peak_memory_mb" in metrics:
            out["memory"] = metrics["peak_memory_mb"] - self.memory_mb
        return out

    def bound(self, name: str) -> float:
        return {"accuracy": self.max_accuracy_drop, "latency": self.latency_ms, "memory": self.memory_mb,
                "gradient": GRAD_COSINE_MIN}[name]

    def describe_violation(self, name: str, excess: float) -> str:
        bound = self.bound(name)
        share = f" (+{excess / bound:.0%})" if bound else ""
        if name == "latency":
            return f"latency p95 {bound + excess:.2f} ms is over the {bound:g} ms target by {excess:.2f} ms{share}"
        if name == "memory":
            return f"peak memory {bound + excess:.1f} MB is over the {bound:g} MB target by {excess:.1f} MB{share}"
        if name == "gradient":
            return f"gradient cosine {bound - excess:.4f} vs the reference is under the required {bound:g}"
        return f"accuracy drop {bound + excess:.4f} is over the allowed {bound:g} by {excess:.4f}"

    def describe(self) -> str:
        return ", ".join([f"latency p95 <= {self.latency_ms:g} ms" if self.latency_ms else "no latency target",
                          f"memory <= {self.memory_mb:g} MB" if self.memory_mb else "no memory target",
                          f"accuracy drop <= {self.max_accuracy_drop:g}"])
