"""A sampler wrapper that keeps the search budget for configurations worth measuring.

It draws a whole configuration from the wrapped sampler (TPE by default) and draws again when the
configuration repeats a finished trial (in canonical form: knobs that change nothing are ignored),
is a combination that cannot work (a knob conflict, known without building anything: it never costs a
trial), or falls within the scope of a build-time failure (the knob values an `Unsupported` named,
e.g. static_int8 on eager for a model FX cannot quantize: that costs one cheap, pruned trial and is
never tried again). The Optuna search space itself stays fixed. And the warm start: the known-good
configurations a new study tries right after its reference (WarmStart).
"""

from __future__ import annotations

from typing import Callable

from optuna.samplers import BaseSampler, RandomSampler

from . import attrs
from .attrs import TrialAttrs
from ..errors import ConfigError, option
from ..targets import Targets

MAX_DRAWS = 64
# The knobs a step from the best trial changes first: those that move throughput most on CPUs and GPUs
# (README, "What the knobs do"); the space's other knobs follow in its order.
NEIGHBOUR_ORDER = ("compile_mode", "quantization", "precision", "pruning_amount", "graph_fusion", "threads")


def _has_values(config: dict, values: dict) -> bool:
    return all(config.get(k) == v for k, v in values.items())


def taken(trials, n_knobs: int, but: int | None = None) -> list[dict]:
    """The configurations of finished trials, of trials running in parallel (--jobs, other machines) and
    of trials enqueued to run next (warm start): no two jobs measure one configuration."""
    out = []
    for t in trials:
        if t.number == but:
            continue
        if t.state.is_finished() or (t.state.name == "RUNNING" and len(t.params) == n_knobs):
            out.append(t.params)
        elif t.state.name == "WAITING" and "fixed_params" in t.system_attrs:
            out.append(t.system_attrs["fixed_params"])
    return out


class ValidConfigSampler(BaseSampler):
    def __init__(self, inner: BaseSampler, distributions: dict, conflict: Callable[[dict], str | None],
                 canonical: Callable[[dict], dict] = dict, in_scope: Callable[[dict, dict], bool] | None = None,
                 seed: int | None = None, required: dict | None = None, target_latency_ms: float | None = None,
                 climb: bool = False):
        self.inner = inner
        self.target_latency_ms = target_latency_ms  # batch sizes the latency curve rules out are moved down
        self.climb = climb  # every other sampled trial, a step from the best one (_local_move)
        self.required = dict(required or {})  # knob values every sampled configuration must have
        self.canonical = canonical
        self.in_scope = in_scope or _has_values
        # When the inner sampler has converged and only proposes what was measured, explore at random.
        self.fallback = RandomSampler(seed=seed)
        self.distributions = distributions
        self.conflict = conflict
        # {trial number: {"climb" | "curve": why}}: what sampling did to a trial, which the study records on the
        # trial (attrs.record: a sampler has no public way to write to a trial of its own)
        self.notes: dict[int, dict] = {}

    def infer_relative_search_space(self, study, trial):
        return dict(self.distributions)

    def sample_relative(self, study, trial, search_space):
        if "fixed_params" in trial.system_attrs:  # an enqueued trial (reference, warm start): Optuna uses those
            return {}
        # The snapshot Optuna passes predates before_trial: GridSampler's grid_id is only in the storage.
        trials = study.get_trials(deepcopy=False)
        trial = next((t for t in trials if t.number == trial.number), trial)
        finished = [t for t in trials if t.state.is_finished()]
        seen = [self.canonical(c) for c in taken(trials, len(self.distributions), but=trial.number)]
        scopes = [s for s in (TrialAttrs.of(t).pruned_scope for t in finished) if s]
        curves = self._curves(finished)

        def acceptable(params: dict) -> bool:
            return (self.canonical(params) not in seen and self.conflict(params) is None
                    and self.in_scope(params, self.required) and not any(self.in_scope(params, s) for s in scopes))

        local = self._local_move(finished, curves, search_space, acceptable) if self.climb else None
        if local is not None:
            self.notes[trial.number] = {"climb": local[1]}
            return local[0]
        params: dict | None = {}
        for sampler in (self.inner, self.fallback):
            for _ in range(MAX_DRAWS):
                params = dict(sampler.sample_relative(study, trial, search_space))
                for name, dist in search_space.items():
                    if name not in params:
                        params[name] = sampler.sample_independent(study, trial, name, dist)
                params, moved = self._within_curve(params, curves, search_space.get("batch_size"))
                if params is not None and acceptable(params):  # None: no batch size of its family can meet the target
                    if moved:
                        self.notes[trial.number] = {"curve": moved}
                    return params
        return params or {}  # the space is exhausted: the study reuses or prunes it

    def _curves(self, finished):
        if self.target_latency_ms is None or "batch_size" not in self.distributions:
            return None
        from .latency_curve import LatencyCurves
        from ..report.results import TrialRecord

        return LatencyCurves([TrialRecord.from_optuna(t) for t in finished], self.target_latency_ms)

    def _local_move(self, finished, curves, search_space: dict, acceptable) -> tuple[dict, str] | None:
        """A step from the best feasible trial so far (once it is not the reference), on every other
        sampled trial: its configuration at the next larger batch size the curve allows (throughput
        grows with the batch until latency or memory stops it), else with one knob changed into a family
        (and thread count) not tried at any batch yet, the knobs that move throughput most first
        (NEIGHBOUR_ORDER). None: TPE's turn, or nothing left near it."""
        from ..report.results import frozen_feasible

        feasible = [t for t in finished if frozen_feasible(t) and len(t.params) == len(self.distributions)]
        best = max(feasible, key=lambda t: t.value, default=None)
        if best is None or TrialAttrs.of(best).reference:
            return None
        sampled = [a for a in map(TrialAttrs.of, finished) if not a.reference and not a.warm_start]
        moves = sum(bool(a.climb) for a in sampled)
        if moves > len(sampled) - moves:  # TPE's turn: it keeps exploring what no step from here reaches
            return None
        distribution = search_space.get("batch_size")
        batch = best.params.get("batch_size")
        larger = _next_larger(distribution, batch) if distribution is not None else None
        if larger is not None:
            params, _ = self._within_curve({**best.params, "batch_size": larger}, curves, distribution)
            if params is not None and params["batch_size"] > batch and acceptable(params):
                return params, f"batch_size {batch} -> {params['batch_size']} of the best trial so far (#{best.number})"
        from .latency_curve import family

        # A family tried at any batch size already told what it is worth: a step goes where nothing was measured.
        tried = {(family(t.params), t.params.get("threads")) for t in finished if len(t.params) == len(self.distributions)}
        names = [n for n in NEIGHBOUR_ORDER if n in search_space] + [n for n in search_space if n not in NEIGHBOUR_ORDER]
        for name in names:
            for value in getattr(search_space[name], "choices", ()):
                if name == "batch_size" or value == best.params[name]:
                    continue
                params, _ = self._within_curve({**best.params, name: value}, curves, distribution)
                if (params is not None and (family(params), params.get("threads")) not in tried
                        and acceptable(params)):
                    return params, f"{name} {best.params[name]} -> {value} of the best trial so far (#{best.number})"
        return None

    @staticmethod
    def _within_curve(params: dict, curves, distribution) -> tuple[dict | None, str | None]:
        """`params` with its batch size moved down to the largest the latency curve allows (and why),
        or None when the curve allows none."""
        if curves is None or distribution is None:
            return params, None
        bound, why = curves.largest_batch(params)
        batch = params["batch_size"]
        if bound is None or batch <= bound:
            return params, None
        allowed = _largest_at_most(distribution, bound)
        if allowed is None:
            return None, None
        return {**params, "batch_size": allowed}, f"batch_size {batch} -> {allowed}: {why}"

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        try:
            self.inner.after_trial(study, trial, state, values)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is done, which only works inside
            # study.optimize; autoopt's ask/tell loop stops on its own trial budget.
            if "Study.stop" not in str(exc):
                raise

    def reseed_rng(self):
        self.inner.reseed_rng()
        self.fallback.reseed_rng()


def _next_larger(distribution, batch: int) -> int | None:
    """The next batch size up: the next value of a list, or twice the batch within a range's bounds."""
    if hasattr(distribution, "choices"):
        return min((c for c in distribution.choices if c > batch), default=None)
    larger = _largest_at_most(distribution, min(distribution.high, 2 * batch))
    return larger if larger is not None and larger > batch else None


def _largest_at_most(distribution, bound: int) -> int | None:
    """The largest value of an integer or categorical batch-size distribution that is at most `bound`."""
    if hasattr(distribution, "choices"):
        return max((c for c in distribution.choices if c <= bound), default=None)
    if bound < distribution.low:
        return None
    step = distribution.step or 1
    return min(distribution.high, distribution.low + (bound - distribution.low) // step * step)


def make_sampler(name: str, seed: int | None, space=None):
    """TPE (default: multivariate, constraint-aware, 10 ms per trial here); GP (Gaussian process,
    constraint-aware, about 1.5 s per trial here: worth it when trials are slow and few); random;
    grid (every combination of a space of lists once, for exhaustive baselines)."""
    import optuna

    if name == "grid":
        numeric = [n for n, d in space.domains.items() if d.choices is None]
        if numeric:
            raise ConfigError(f"{option('sampler', 'grid')} needs list domains; {space.source} gives {numeric[0]} a range. "
                              "List its values instead.")
        return optuna.samplers.GridSampler({n: list(d.choices) for n, d in space.domains.items()}, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# A known-good warm-start configuration serves a sample at least this many times faster than the
# reference (measured here: 5-20x); its batch size is capped where the target could still be met.
WARM_START_SPEEDUP = 2.0


class WarmStart:
    """Enqueues the space's warm-start trials once the reference has finished: under a latency target
    their batch size is capped by the reference's figure, so that a known-good configuration is not
    wasted on a batch that cannot meet the target."""

    def __init__(self, study, space, device: str, targets: Targets):
        self.study, self.space, self.device, self.targets = study, space, device, targets
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        references = [t for t in self.study.get_trials(deepcopy=False) if TrialAttrs.of(t).reference]
        if not references or not references[-1].state.is_finished():
            return  # a parallel job asks meanwhile: it samples; these come on the next ask after it
        self.done = True
        reference = references[-1]  # a resumed study's earlier reference may have failed
        p95 = (TrialAttrs.of(reference).metrics or {}).get("latency_ms_p95")
        max_batch = None
        if self.targets.latency_ms is not None and p95:
            per_sample_ms = p95 / reference.params.get("batch_size", 1)
            max_batch = self.targets.latency_ms / per_sample_ms * WARM_START_SPEEDUP
        from .. import knobs
        from ..machine import search_features

        trials = self.study.get_trials(deepcopy=False)
        seen = [knobs.canonical(c) for c in taken(trials, len(self.space.domains))]
        for config in self.space.warm_start(self.device, max_batch, search_features(self.device)):
            if knobs.canonical(config) not in seen:  # a parallel job drew it meanwhile
                attrs.enqueue(self.study, config, warm_start=True)
