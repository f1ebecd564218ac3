"""The study's report, written at the end of a search and logged on its MLflow parent run:

- pareto_front.png / pareto_front.csv: throughput vs accuracy drop, the front marked;
- trials.csv: every trial, its state and reason, knobs and metrics;
- param_importances.csv / param_importances.png: which knobs moved throughput (Optuna's importance
  evaluator), when the study has enough complete trials to tell;
- optimization_history.png: each trial's throughput, feasible or not, and the best feasible so far;
- int8_sensitivity_<runtime>.csv / .png: per int8 path the int8_layers trials used, each layer's
  sensitivity (output error removed by keeping it in float), most sensitive first;
- report.md: the reference, the winner, why the runner-up lost, how noisy the machine was, and the int8
  layer rankings.
"""

from __future__ import annotations

import csv
import logging
import statistics
from pathlib import Path

from ..trial.measure import NOISY_CV
from .results import TrialRecord, TrialState, pareto_front, ranked_feasible, speedup, winning_tie
from ..targets import Targets

METRIC_COLUMNS = ("throughput", "latency_ms_p50", "latency_ms_p95", "latency_cv", "latency_unreliable", "machine_load",
                  "peak_memory_mb", "model_size_mb", "accuracy", "accuracy_drop", "grad_cosine", "build_s", "distill_s",
                  "measure_s", "accuracy_s")


def write_report(trials: list[TrialRecord], targets: Targets, study, reference: TrialRecord | None,
                 workdir: Path, title: str) -> list[Path]:
    """Write the report files into `workdir`; returns their paths (what exists depends on the trials)."""
    files = [write_trials_csv(trials, workdir)]
    if pareto_front(trials):
        files += list(write_pareto(trials, targets.max_accuracy_drop, workdir))
    importances = param_importances(study)
    if importances:
        path = workdir / "param_importances.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["knob", "importance"])
            writer.writerows((k, f"{v:.4f}") for k, v in importances.items())
        files += [path, plot_importances(importances, workdir)]
    if any(t.state == TrialState.COMPLETE for t in trials):
        files.append(plot_history(trials, workdir))
    rankings = sensitivity_files(trials, workdir)
    files += [f for _, paths in rankings for f in paths]
    path = workdir / "report.md"
    path.write_text(markdown(trials, targets, reference, importances, title) + "".join(text for text, _ in rankings))
    files.append(path)
    return files


def sensitivity_files(trials: list[TrialRecord], workdir: Path) -> list[tuple[str, list[Path]]]:
    """Per int8 layer ranking the trials used (int8_layers): (its report.md section, [csv, png])."""
    from ..trial.sensitivity import load_ranking

    out = []
    for key in dict.fromkeys(t.metrics.get("int8_ranking") for t in trials if t.metrics.get("int8_ranking")):
        ranked = load_ranking(key)
        if ranked is None:  # ranked on another machine of the study: its cache is there
            continue
        name = f"int8_sensitivity_{ranked['family']}"
        table = workdir / f"{name}.csv"
        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "sensitivity"])
            writer.writerows((u, f"{ranked['sensitivity'][u]:.6g}") for u in ranked["units"])
        lines = "".join(f"| {u} | {ranked['sensitivity'][u]:.4g} |\n" for u in ranked["units"])
        text = (f"\n## Int8 layer sensitivity ({ranked['family']})\n\nOutput error of the all-int8 model: "
                f"{ranked['error_int8']:.4g} (relative squared error against fp32); each layer's sensitivity is the "
                f"part of it that keeping that layer in float removes. Most sensitive first:\n\n"
                f"| layer | sensitivity |\n|---|---|\n{lines}")
        out.append((text, [table, plot_sensitivity(ranked, workdir / f"{name}.png")]))
    return out


def plot_sensitivity(ranked: dict, path: Path) -> Path:
    plt = _pyplot()
    units = ranked["units"][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(units) + 1.5))
    ax.barh(units, [ranked["sensitivity"][u] for u in units], color="tab:red")
    ax.set_xlabel("output error removed by keeping the layer in float")
    ax.set_title(f"Int8 layer sensitivity ({ranked['family']}; all-int8 error {ranked['error_int8']:.3g})")
    return _save(fig, path)


def write_trials_csv(trials: list[TrialRecord], workdir: Path) -> Path:
    knobs = sorted({k for t in trials for k in t.config})
    path = workdir / "trials.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "feasible", "reason", "reused_from", "curve", *knobs, *METRIC_COLUMNS])
        for t in trials:
            writer.writerow([t.number, t.state, t.feasible, t.reason or "", "" if t.reused_from is None else t.reused_from,
                             t.curve or "",
                             *(t.config.get(k, "") for k in knobs), *(t.metrics.get(m, "") for m in METRIC_COLUMNS)])
    return path


def param_importances(study) -> dict[str, float]:
    """Knob -> share of the throughput variance it explains; {} when the study cannot tell yet."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) < 4 or not varying:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, params=sorted(varying)))
    except Exception as exc:  # noqa: BLE001 - importances are a nicety; the report goes on without them
        logging.getLogger("autoopt").info("parameter importances unavailable: %s", exc)
        return {}


def budget(trials: list[TrialRecord]) -> dict[str, int]:
    """Where the trials went: measured fully, screened out, stopped early past a target, reused, other
    (pruned as a conflict or unsupported, failed); and how many had their batch moved by the curve."""
    counts = {"measured fully": 0, "screened out": 0, "stopped early": 0, "reused": 0, "other": 0}
    for t in trials:
        if t.reused_from is not None:
            counts["reused"] += 1
        elif t.state == TrialState.COMPLETE:
            counts["measured fully"] += 1
        elif t.metrics.get("screened"):
            counts["screened out"] += 1
        elif t.metrics.get("stopped_early") or (t.state == TrialState.PRUNED and t.metrics):
            counts["stopped early"] += 1
        else:
            counts["other"] += 1
    return {**counts, "batch moved by the latency curve": sum(t.curve is not None for t in trials)}


def _line(t: TrialRecord, reference: TrialRecord | None) -> str:
    from ..knobs import describe

    m = t.metrics
    ratio = speedup(t, reference)
    text = "" if ratio is None else f", {ratio:.2f}x the reference"
    if reference and t.remeasured and reference.remeasured:
        text += f" when re-measured interleaved ({t.remeasured['throughput']:,.0f} samples/s there)"
    return (f"trial {t.number} ({describe(t.config)}): {m['throughput']:,.0f} samples/s{text}, p95 "
            f"{m['latency_ms_p95']:.2f} ms, memory growth {m['peak_memory_mb']:.1f} MB"
            + (f", serving {t.figures['serving_rss_mb']:,.0f} MB" if t.figures.get("serving_rss_mb") else "")
            + f", accuracy drop {m['accuracy_drop']:+.4f}")


def markdown(trials: list[TrialRecord], targets: Targets, reference: TrialRecord | None,
             importances: dict[str, float], title: str) -> str:
    ranked = ranked_feasible(trials)
    measured = [t for t in trials if t.state == TrialState.COMPLETE and t.reused_from is None]
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    out = [f"# {title}", "",
           f"{len(trials)} trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
           f"{states[TrialState.FAILED]} failed. Targets: {targets.describe()}.", ""]
    spent = budget(trials)
    moved = spent.pop("batch moved by the latency curve")
    out += ["## Where the budget went", "",
            ", ".join(f"{n} {what}" for what, n in spent.items()) + f"; the latency curve moved {moved} trial(s)' "
            "batch size down (trials.csv, column curve).", ""]
    out += ["## Reference", "", _line(reference, None) if reference else "The reference did not complete.", ""]
    out += ["## Winner", ""]
    if ranked:
        winner = ranked[0]
        out += [_line(winner, reference), ""]
        tie = winning_tie(trials)
        if tie is not None:
            out += [f"It won {tie.describe()}.", ""]
        if "padding_share" in winner.metrics:  # a pipeline with a padding mask (autoopt.padding)
            m = winner.metrics
            out += [f"Padding: {m['padding_share']:.0%} of the positions in its timed batches (the pipeline's "
                    f"make_inputs({winner.config['batch_size']})) were padding; it ran {m['timed_length']:.0f} positions "
                    f"a row (trim_padding={winner.config.get('trim_padding', 'off')}). Traffic padded differently "
                    f"gains differently from trimming.", ""]
        out += ["## Why the runner-up lost", ""]
        if len(ranked) > 1:
            second = ranked[1]
            gap = 1 - second.figures["throughput"] / winner.figures["throughput"]  # what the winner was chosen on
            how = f"{gap:.1%} slower" if gap >= 0 else f"{-gap:.1%} faster, within the noise (the tie above)"
            out += [f"The best other feasible configuration, {_line(second, reference)}, is {how}.", ""]
        faster = [t for t in measured if not t.feasible and t.metrics["throughput"] > winner.figures["throughput"]]
        if faster:
            best_miss = max(faster, key=lambda t: t.metrics["throughput"])
            misses = "; ".join(targets.describe_violation(k, v) for k, v in best_miss.constraints.items() if v > 0)
            out += [f"The fastest configuration overall, {_line(best_miss, reference)}, misses a target: {misses}.", ""]
        if len(ranked) == 1 and not faster:
            out += ["No other configuration met the targets.", ""]
    else:
        out += ["No trial met every target.", ""]
    out += ["## How noisy the machine was", ""]
    cvs = [t.metrics["latency_cv"] for t in measured if "latency_cv" in t.metrics]
    loads = [t.metrics["machine_load"] for t in measured if "machine_load" in t.metrics]
    if cvs:
        noisy = sum(bool(t.metrics.get("latency_unreliable")) for t in measured)
        repeated = sum(bool(t.metrics.get("latency_repeats")) for t in measured)
        out.append(f"Coefficient of variation of the timed calls: median {statistics.median(cvs):.3f}, "
                   f"max {max(cvs):.3f} over {len(cvs)} measured trials; {repeated} measured again for noise, "
                   f"{noisy} still unreliable (CV above {NOISY_CV:g}).")
    if loads:
        out.append(f"Load of the machine during measurement (1-minute load average per core): median "
                   f"{statistics.median(loads):.2f}, max {max(loads):.2f}.")
    out.append("")
    if importances:
        out += ["## What moved throughput", "", "| knob | importance |", "|---|---|"]
        out += [f"| {k} | {v:.3f} |" for k, v in importances.items()]
        out.append("")
    return "\n".join(out)


def write_pareto(trials: list[TrialRecord], max_drop: float, workdir: Path) -> tuple[Path, Path]:
    """pareto_front.csv (the front) and pareto_front.png (every complete trial, the front marked)."""
    front = pareto_front(trials)
    keys = sorted({k for t in front for k in t.config})
    table = workdir / "pareto_front.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, "throughput", "accuracy_drop", "latency_ms_p95", "peak_memory_mb", "feasible"])
        for t in front:
            m = t.metrics
            writer.writerow([t.number, *(t.config.get(k) for k in keys), f"{m['throughput']:.2f}",
                             f"{m['accuracy_drop']:.5f}", f"{m['latency_ms_p95']:.3f}", f"{m['peak_memory_mb']:.1f}", t.feasible])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.reused_from is None]
    for feasible, color, label in ((True, "tab:green", "meets all targets"), (False, "tab:orange", "misses a target")):
        group = [t for t in done if t.feasible == feasible]
        ax.scatter([t.metrics["accuracy_drop"] for t in group], [t.metrics["throughput"] for t in group],
                   color=color, alpha=0.6, label=label, zorder=2)
    xs = [t.metrics["accuracy_drop"] for t in front]
    ys = [t.metrics["throughput"] for t in front]
    ax.step(xs, ys, where="post", color="tab:blue", label="Pareto front", zorder=1)
    ax.scatter(xs, ys, facecolors="none", edgecolors="tab:blue", s=120, zorder=3)
    for t, x, y in zip(front, xs, ys):
        ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"allowed drop {max_drop:g}")
    ax.set_xlabel("accuracy drop vs the reference (lower is better)")
    ax.set_ylabel("throughput, samples/s (higher is better)")
    ax.set_title("Trials and the Pareto front")
    ax.legend(fontsize=8, loc="best")
    return table, _save(fig, workdir / "pareto_front.png")


def plot_history(trials: list[TrialRecord], workdir: Path) -> Path:
    """optimization_history.png: throughput by trial number (feasible or not; a reused configuration at
    its measured figure) and the best feasible throughput so far, the line the search climbs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    for feasible, color, label in ((True, "tab:green", "meets all targets"), (False, "tab:orange", "misses a target")):
        group = [t for t in done if t.feasible == feasible]
        ax.scatter([t.number for t in group], [t.metrics["throughput"] for t in group], color=color, alpha=0.7,
                   label=label, zorder=2)
    best, xs, ys = None, [], []
    for t in done:
        if t.feasible and (best is None or t.metrics["throughput"] > best):
            best = t.metrics["throughput"]
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    ax.step(xs, ys, where="post", color="tab:blue", label="best feasible so far", zorder=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [t.metrics["throughput"] for t in done if t.metrics["throughput"] > 0]
    if values and max(values) > 20 * min(values):  # a 50x speedup flattens everything else on a linear axis
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("throughput, samples/s")
    ax.set_title("Optimization history")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, workdir / "optimization_history.png")


def plot_importances(importances: dict[str, float], workdir: Path) -> Path:
    """param_importances.png: the knobs by their share of the throughput variance, largest on top."""
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        ax.annotate(f"{importances[name]:.2f}", (importances[name], y), textcoords="offset points", xytext=(4, -3),
                    fontsize=8)
    ax.set_xlabel("importance for throughput (Optuna's evaluator; the shares sum to 1)")
    ax.set_title("What moved throughput")
    ax.set_xlim(0, max(importances.values()) * 1.15 or 1)
    return _save(fig, workdir / "param_importances.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: the plots are files
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path
