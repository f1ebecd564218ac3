"""Export a trial for deployment: the bundle (model file + manifest), built and verified.

(autoopt.bundle.export: a submodule of `bundle`, so it does not shadow the `autoopt.export()` function.)

The bundle directory holds the model file its format names (`model.onnx`, `model.pt`, ...) and
`autoopt.json`. The runtime that built the trial's `predict` writes the file, so what ships is what
was measured; its `ExportFormat` says how the file is checked, loaded and logged.
Verification: the format's structural check; a fresh process that cannot import autoopt (verifier.py)
loads the file with the format's plain loader, runs the pipeline's inputs at two batch sizes, and
re-times the trial's batch size under the recorded malloc environment (and once more without it, for
the record); outputs are compared with the original model (build_model, fp32 eager: what the knobs
transformed; build_reference is the metric's yardstick only) within the tolerance the trial's knobs
declare, and the pipeline's metric is recomputed on the exported file. Any mismatch fails the export
with the numbers and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import knobs
from . import verifier
from .directory import EXAMPLE_INPUTS, check_out, place_files
from .manifest import Manifest
from ..errors import AutoOptError, ConfigError, ExportError, option
from ..report.results import TrialState, ranked_feasible, records
from ..runtimes import FORMATS, export_format, packages
from ..study import attrs
from ..study.storage import trial_meta

ACCURACY_TOLERANCE = 0.005  # the recomputed metric must match the trial's within half a point
SAME_BUILD = (0.999, 0.05)  # (min cosine, relative error) of the shipped file against the same build in this process
EXAMPLE_ROWS = 8  # rows of example inputs a bundle carries
VERIFY_TIMING_S = {"warmup_s": 0.5, "block_s": 1.0}  # the verifier's warm-up and each of its 3 timed blocks


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest


def _flat(outputs, prefix: str = "") -> dict:
    """Outputs keyed by their path in the structure ("logits", "aux.0"), the verifier's convention."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return {prefix or "output": outputs}
    items = outputs.items() if isinstance(outputs, dict) else enumerate(outputs)
    out = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def package_versions(*names: str) -> dict:
    """{package: installed version or None}."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def check_format(fmt: str, name: str = "format") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"{option(name)} must be one of [{', '.join(FORMATS)}]. Got {fmt!r}.")
    return fmt


def default_format(study, number: int | None) -> str:
    """The format `autoopt export` ships without --format: the study's --export, else the one that ships
    trial `number` (default: the best feasible trial), whatever its runtime (runtimes.format_for)."""
    from ..runtimes import format_for
    from ..study.storage import search_meta

    if search_meta(study).get("export"):
        return search_meta(study)["export"]
    trials = records(study)
    chosen = next((t for t in trials if t.number == number), None) if number is not None else \
        next(iter(ranked_feasible(trials)), None)
    if chosen is None:
        return "onnx"  # nothing to ship: select_trial says why, for the format a user would try first
    fmt = format_for(chosen.config.get("compile_mode", "eager"))
    if fmt is None:
        raise ConfigError(f"Trial {chosen.number} ran on compile_mode={chosen.config.get('compile_mode')}, which no "
                          f"export format ships. Pass {option('format')} with {option('trial')} of another trial.")
    return fmt


def select_trial(study, number: int | None, fmt: str, carry: bool = False):
    """The trial to export: `number`, or the best feasible one; its runtime must suit the format (with
    `carry`, a runtime the format carries too: ExportFormat.carries)."""
    device = (attrs.signature(study) or {}).get("device", "cpu")
    if device != "cpu":  # the export builds, verifies and re-times on the CPU: it would ship something else
        raise ConfigError(f"Study {study.study_name} ran its trials on {device}; export builds, verifies and re-times "
                          f"on the CPU, so it would ship a model other than the one measured. Search with "
                          f"{option('device', 'cpu')} to export.")
    trials = records(study)
    runtime = FORMATS[fmt]
    shipped = {runtime, *(export_format(fmt).carries if carry else ())}
    carried = [t for t in ranked_feasible(trials) if t.config.get("compile_mode") in shipped]
    if number is None:
        if not carried:
            raise ConfigError(f"Study {study.study_name} has no feasible trial that ran on {runtime}, the runtime "
                              f"{option('format', fmt)} ships. Search with {option('export', fmt)}, or pass "
                              f"{option('trial')}.")
        return carried[0]
    found = [t for t in trials if t.number == number]
    if not found or found[0].state != TrialState.COMPLETE:
        raise ConfigError(f"Trial {number} of study {study.study_name} is not a complete trial; "
                          f"complete trials: {[t.number for t in trials if t.state == TrialState.COMPLETE]}.")
    chosen = found[0]
    if chosen.config.get("compile_mode") not in shipped:
        hint = (f"the closest exportable trial is {carried[0].number} ({carried[0].metrics['throughput']:,.0f} samples/s)"
                if carried else f"no feasible trial of this study ran on {runtime}; search with {option('export', fmt)}")
        raise ConfigError(f"Trial {chosen.number} ran on compile_mode={chosen.config.get('compile_mode')}, which "
                          f"{option('format', fmt)} cannot carry (it needs compile_mode={runtime}): {hint}.")
    return chosen


def export_trial(study, trial, fmt: str, out: str | os.PathLike, pipeline=None) -> ExportResult:
    """Build, verify and write the bundle of `trial` (a TrialRecord of `study`) atomically to `out`."""
    from ..trial.accuracy import candidate_accuracy
    from ..trial.build import build_candidate
    from ..machine import cpu_info
    from ..padding import annotate_manifest
    from ..pipeline import load_pipeline

    fmt_spec = export_format(fmt)
    meta = trial_meta(study, trial)
    if pipeline is None and meta.get("pipeline") and not Path(meta["pipeline"]).exists():
        raise ConfigError(f"Trial {trial.number} of study {study.study_name} ran on host {meta['host']}, whose pipeline "
                          f"file {meta['pipeline']} is not on this machine. Export it there, or pass pipeline=.")
    pipe = pipeline or load_pipeline(meta.get("pipeline"))
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        # A carried trial (an inductor one shipped as AOTInductor) is built on the format's own runtime.
        config = {**trial.config, "compile_mode": FORMATS[fmt]}
        batch = int(config["batch_size"])
        shipped_float = trial.metrics.get("float_layers")  # int8_layers: the layers the trial measured in float
        runtime, prepared, ctx, build_s = build_candidate(
            pipe, config, "cpu", int(config["threads"]), str(tmp), pipe.make_inputs(batch),
            float_layers=None if shipped_float is None else [u for u in shipped_float.split(",") if u])
        model_file = tmp / fmt_spec.model_file
        shipped = place_files(fmt_spec, prepared.artifact, tmp)
        reference = pipe.build_model().eval()  # the export transforms build_model; build_reference only scores
        compared = _fidelity_model(pipe, config, ctx, reference)
        for extra in tmp.iterdir():  # intermediate files of the build
            if extra not in shipped:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        _write_example_inputs(tmp, pipe)
        manifest = dataclasses.replace(
            model_manifest(fmt, config, prepared, reference, pipe.make_inputs(2)),
            metrics={k: trial.metrics.get(k) for k in ("latency_ms_p50", "latency_ms_p95", "throughput",
                                                        "peak_memory_mb", "model_size_mb", "accuracy", "accuracy_drop")},
            remeasured=trial.remeasured, measured_as=trial.config.get("compile_mode"),
            build_s=build_s, built_by=prepared.state.get("how", FORMATS[fmt]),
            float_layers=ctx.int8.get("float_layers", []),  # int8_layers: the layers int8 left in float
            versions=package_versions("autoopt", "torch", *packages()), machine=cpu_info(),
            source={"study": study.study_name, "trial": trial.number, "mlflow_run_id": trial.run_id,
                    "mlflow_parent_run_id": meta.get("parent_run_id"), "pipeline": pipe.name})
        annotate_manifest(manifest, pipe)  # trim_padding: what the model expects of its padded inputs
        manifest.write(tmp)
        if fmt_spec.check is not None:
            fmt_spec.check(str(model_file))
        manifest.verification = _verify(tmp, manifest, pipe, compared, batch, runtime.load(prepared, config, ctx).predict)
        from .loader import load

        accuracy = candidate_accuracy(pipe, load(tmp))
        manifest.verification["accuracy"] = accuracy
        if abs(accuracy - trial.metrics["accuracy"]) > ACCURACY_TOLERANCE:
            raise ExportError(f"the exported file scores {accuracy:.4f} where the trial measured "
                              f"{trial.metrics['accuracy']:.4f} (more than {ACCURACY_TOLERANCE} apart)")
        manifest.write(tmp)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, AutoOptError):
            raise
        if isinstance(exc, Exception):
            raise ExportError(f"export of trial {trial.number} failed: {type(exc).__name__}: {exc}"[:500]) from exc
        raise
    return ExportResult(out, manifest)


def _write_example_inputs(bundle: Path, pipe) -> None:
    """A few rows of the pipeline's inputs (arr_0, arr_1, ... in input order), for `autoopt bench` and the
    MLflow input example: a deployment can be re-timed without the pipeline."""
    import numpy as np


    np.savez(bundle / EXAMPLE_INPUTS, *[t.detach().cpu().numpy() for t in pipe.make_inputs(EXAMPLE_ROWS)])


def _fidelity_model(pipe, config: dict, ctx, reference):
    """The model the exported file is compared with: `reference` (build_model's), or the retrained one where a
    knob retrained the weights (knobs.fidelity_base: a distilled student, fp32 eager, from the cache)."""
    base = knobs.fidelity_base(config)
    if not base:
        return reference
    model = knobs.apply_model_knobs(pipe.build_model().eval(), base, dataclasses.replace(ctx, report={}, notes=[]))
    model.eval()
    return model


def model_manifest(fmt: str, config: dict, prepared, reference, example: tuple) -> Manifest:
    """What loading the model file takes: its format and name, the configuration, the inputs (names,
    shapes with a batch axis, dtypes), the reference's output structure and the runtime settings the
    trial was measured with (threads, the format's own settings, the malloc environment)."""
    from ..trial.measure import allocator_env
    from ..runtimes.base import input_names

    spec = export_format(fmt)
    names = prepared.state.get("input_names") or input_names(reference, len(example))
    return Manifest(
        format=fmt, model_file=spec.model_file, config=config,
        inputs=[{"name": name, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}
                for name, t in zip(names, example)],
        outputs=_output_structure(reference, example),
        runtime={"threads": int(config["threads"]), **spec.settings(config, prepared), "environment": allocator_env()})


def _output_structure(model, example) -> dict:
    import torch
    from torch.utils import _pytree as pytree

    with torch.inference_mode():
        outputs = model(*example)
    return {"paths": list(_flat(outputs)), "pytree": pytree.treespec_dumps(pytree.tree_flatten(outputs)[1])}


def _verify(bundle: Path, manifest: Manifest, pipe, reference, batch: int, measured=None) -> dict:
    """Load and run the bundle in a fresh process that cannot import autoopt; compare with `reference` (the
    original model, or the retrained one: _fidelity_model) or, for an approximation by design, with `measured`
    (the trial's model built in this process: predict)."""
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="autoopt-verify-"))
    try:
        batches = [manifest.fixed_batch] if manifest.fixed_batch else sorted({3, batch})
        inputs = {b: pipe.make_inputs(b) for b in batches}  # once: make_inputs may be random
        for b in batches:
            np.savez(work / f"inputs_{b}.npz", *[t.numpy() for t in inputs[b]])
        environment = manifest.environment
        fmt = export_format(manifest.format)
        report = run_verifier(work, bundle, fmt, batches, batch, {**os.environ, **environment})
        # The same timing without the recorded environment: what a deployment that skips it would see.
        plain = run_verifier(work, bundle, fmt, [], batch,
                             {k: v for k, v in os.environ.items() if k not in environment}) if environment else report
        base = knobs.fidelity_base(manifest.config)
        compared_with = f"the retrained model ({knobs.describe(base)})" if base else "the original model"
        to_reference = _compare(work, inputs, reference)
        min_cos, rel = knobs.export_tolerance(manifest.config)
        gate = {"compared_with": compared_with, **to_reference}
        if rel == float("inf") and measured is not None:
            # An approximation by design (int8, pruning) is bounded by the metric check below, which the trial passed:
            # the file must compute what the trial's own model computes (built again here), however far that is
            # from the original.
            min_cos, rel = SAME_BUILD
            gate = {"compared_with": "the trial's model, built in this process", **_compare(work, inputs, measured),
                    f"min_cosine_to_{'retrained' if base else 'original'}": to_reference["min_cosine"]}
        if gate["min_cosine"] < min_cos or gate["max_relative_error"] > rel:
            raise ExportError(f"output {gate['worst']} differs from {gate['compared_with']}: max abs error "
                              f"{gate['max_abs_error']:.3g}, cosine {gate['min_cosine']:.6f} (needs cosine >= {min_cos})")
        return {"batches": batches, **{k: v for k, v in gate.items() if k not in ("worst", "max_relative_error")},
                "fresh_process_latency_ms_p50": report["latency_ms_p50"],
                "fresh_process_latency_ms_p95": report["latency_ms_p95"], "serving_rss_mb": report["serving_rss_mb"],
                "fresh_process_latency_ms_p50_without_environment": plain["latency_ms_p50"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compare(work: Path, inputs: dict, model) -> dict:
    """The fresh process's outputs (outputs_<batch>.npz in `work`) against `model`'s on the same inputs: the worst
    cosine, max abs error and error relative to the output's scale, and where the worst cosine was."""
    import numpy as np
    import torch

    out = {"min_cosine": 1.0, "max_abs_error": 0.0, "max_relative_error": 0.0, "worst": None}
    for b, batch in inputs.items():
        with torch.inference_mode():
            expected = _flat(model(*batch))
        got = np.load(work / f"outputs_{b}.npz")
        for key, ref in expected.items():
            value, ref = torch.from_numpy(got[key]).float(), ref.float()
            err = float((value - ref).abs().max())
            cos = float(torch.nn.functional.cosine_similarity(value.reshape(1, -1), ref.reshape(1, -1)))
            if cos < out["min_cosine"] or out["worst"] is None:
                out.update(min_cosine=cos, worst=f"{key!r} at batch {b}")
            out["max_abs_error"] = max(out["max_abs_error"], err)
            out["max_relative_error"] = max(out["max_relative_error"], err / max(1.0, float(ref.abs().max())))
    return out


def run_verifier(work: Path, bundle: Path, fmt, batches: list[int], time_batch: int, env: dict,
                 serve_calls: int | None = None) -> dict:
    """Run verifier.py on `bundle` in a fresh interpreter (-I: no script directory, no user site)
    that cannot import autoopt; returns its report (the timing of `time_batch`, or `serve_calls` untimed
    calls there, and the process's peak resident memory)."""
    import inspect

    request = {"bundle": str(bundle), "work": str(work), "batches": batches, "time_batch": time_batch,
               "loader": inspect.getsource(fmt.plain_loader), "loader_name": fmt.plain_loader.__name__,
               "serve_calls": serve_calls, **VERIFY_TIMING_S}
    (work / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-I", verifier.__file__, str(work / "request.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"the bundle does not load or run without autoopt: {tail[0]}")
    return json.loads((work / "report.json").read_text())
