"""Export a trial for deployment: the bundle (model file + manifest), built and verified.

(Named bundle.py, not export.py: a submodule named `export` would shadow the `autoopt.export()` function.)

The bundle directory holds `model.onnx` (one file) or `model.pt` (TorchScript) and `autoopt.json`.
The runtime that built the trial's `predict` writes the file, so what ships is what was measured.
Verification: onnx.checker; a fresh process that cannot import autoopt loads the file with plain
onnxruntime / torch.jit.load, runs the pipeline's inputs at two batch sizes, and re-times the trial's
batch size under the recorded malloc environment (and once more without it, for the record); outputs
are compared with the reference model, and the pipeline's metric is recomputed on the exported file.
Any mismatch fails the export with the numbers and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import AutoOptError, ConfigError

FORMATS = {"onnx": "onnxruntime", "torchscript": "torchscript"}  # format -> the runtime that writes it
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
ACCURACY_TOLERANCE = 0.005  # the recomputed metric must match the trial's within half a point


class ExportError(AutoOptError):
    """The export could not be written or did not verify; nothing was left behind."""


@dataclass
class ExportResult:
    path: Path
    manifest: dict


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


def select_trial(study, number: int | None, fmt: str):
    """The trial to export: `number`, or the best feasible one; its runtime must suit the format."""
    from .study import ranked_feasible, records

    trials = records(study)
    carried = [t for t in ranked_feasible(trials) if t.config.get("compile_mode") == FORMATS[fmt]]
    if number is None:
        if not carried:
            raise ConfigError(f"Study {study.study_name} has no feasible trial that ran on {FORMATS[fmt]}, the runtime "
                              f"--format {fmt} ships. Search with --export {fmt}, or pass --trial N.")
        return carried[0]
    found = [t for t in trials if t.number == number]
    if not found or found[0].state != "COMPLETE":
        raise ConfigError(f"Trial {number} of study {study.study_name} is not a complete trial; "
                          f"complete trials: {[t.number for t in trials if t.state == 'COMPLETE']}.")
    chosen = found[0]
    if chosen.config.get("compile_mode") != FORMATS[fmt]:
        hint = (f"the closest exportable trial is {carried[0].number} ({carried[0].metrics['throughput']:,.0f} samples/s)"
                if carried else f"no feasible trial of this study ran on {FORMATS[fmt]}; search with --export {fmt}")
        raise ConfigError(f"Trial {chosen.number} ran on compile_mode={chosen.config.get('compile_mode')}, which "
                          f"--format {fmt} cannot carry (it needs compile_mode={FORMATS[fmt]}): {hint}.")
    return chosen


def export_trial(study, trial, fmt: str, out: str | os.PathLike, pipeline=None) -> ExportResult:
    """Build, verify and write the bundle of `trial` (a TrialRecord of `study`) atomically to `out`."""
    from .accuracy import candidate_accuracy
    from .measure import allocator_env
    from .pipeline import load_pipeline
    from .worker import build_candidate

    meta = study.user_attrs.get("autoopt", {})
    pipe = pipeline or load_pipeline(meta.get("pipeline"))
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty. Choose a new directory or empty it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        config = trial.config
        batch = int(config["batch_size"])
        runtime, prepared, ctx, build_s = build_candidate(pipe, config, "cpu", int(config["threads"]), str(tmp),
                                                          pipe.make_inputs(batch))
        model_file = tmp / MODEL_FILES[fmt]
        if Path(prepared.artifact).resolve() != model_file:
            shutil.copyfile(prepared.artifact, model_file)
        for extra in tmp.iterdir():  # intermediate files of the build
            if extra != model_file:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        reference = pipe.reference_model().eval()
        example = pipe.make_inputs(2)
        manifest = {
            "format": fmt, "model_file": model_file.name, "config": config,
            "inputs": [{"name": name, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}
                       for name, t in zip(_input_names(prepared, reference, example), example)],
            "outputs": _output_structure(reference, example),
            "runtime": {"threads": int(config["threads"]), "graph_fusion": config.get("graph_fusion", "basic"),
                        "dtype": str(prepared.state.get("dtype", "torch.float32")).replace("torch.", ""),
                        "environment": allocator_env()},
            "metrics": {k: trial.metrics.get(k) for k in ("latency_ms_p50", "latency_ms_p95", "throughput",
                                                           "peak_memory_mb", "model_size_mb", "accuracy", "accuracy_drop")},
            "remeasured": trial.remeasured,  # the end-of-search interleaved figures, when the trial took part
            "build_s": build_s, "built_by": prepared.state.get("how", FORMATS[fmt]), "versions": package_versions("autoopt", "torch", "onnxruntime", "onnx"),
            "source": {"study": study.study_name, "trial": trial.number, "mlflow_run_id": trial.run_id,
                       "mlflow_parent_run_id": meta.get("parent_run_id"), "pipeline": pipe.name},
        }
        (tmp / "autoopt.json").write_text(json.dumps(manifest, indent=2))
        if fmt == "onnx":
            import onnx

            onnx.checker.check_model(str(model_file))
        manifest["verification"] = _verify(tmp, manifest, pipe, reference, batch)
        from .loader import load

        accuracy = candidate_accuracy(pipe, load(tmp))
        manifest["verification"]["accuracy"] = accuracy
        if abs(accuracy - trial.metrics["accuracy"]) > ACCURACY_TOLERANCE:
            raise ExportError(f"the exported file scores {accuracy:.4f} where the trial measured "
                              f"{trial.metrics['accuracy']:.4f} (more than {ACCURACY_TOLERANCE} apart)")
        (tmp / "autoopt.json").write_text(json.dumps(manifest, indent=2))
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


def _input_names(prepared, model, example) -> list[str]:
    from .runtimes.onnxruntime import input_names

    return prepared.state.get("input_names") or input_names(model, len(example))


def _output_structure(model, example) -> dict:
    import torch
    from torch.utils import _pytree as pytree

    with torch.inference_mode():
        outputs = model(*example)
    return {"paths": list(_flat(outputs)), "pytree": pytree.treespec_dumps(pytree.tree_flatten(outputs)[1])}


def _tolerance(config: dict) -> tuple[float, float]:
    """(minimum cosine, relative max-abs error) the exported outputs must reach against the reference."""
    if config.get("quantization", "none") != "none" or config.get("pruning_amount", 0) > 0:
        return 0.95, float("inf")  # approximations by design: the metric check below bounds them
    if config.get("precision", "fp32") != "fp32":
        return 0.999, 0.05
    return 0.99999, 1e-3


def _verify(bundle: Path, manifest: dict, pipe, reference, batch: int) -> dict:
    """Load and run the bundle in a fresh process that cannot import autoopt; compare with the reference."""
    import numpy as np
    import torch

    work = Path(tempfile.mkdtemp(prefix="autoopt-verify-"))
    try:
        batches = sorted({3, batch})
        inputs = {b: pipe.make_inputs(b) for b in batches}  # once: make_inputs may be random
        for b in batches:
            np.savez(work / f"inputs_{b}.npz", *[t.numpy() for t in inputs[b]])
        environment = manifest["runtime"]["environment"]
        report = _run_verifier(work, {"bundle": str(bundle), "batches": batches, "time_batch": batch},
                               {**os.environ, **environment})
        # The same timing without the recorded environment: what a deployment that skips it would see.
        plain = _run_verifier(work, {"bundle": str(bundle), "batches": [], "time_batch": batch},
                              {k: v for k, v in os.environ.items() if k not in environment}) if environment else report
        min_cos, rel = _tolerance(manifest["config"])
        worst_cos, worst_err = 1.0, 0.0
        for b in batches:
            with torch.inference_mode():
                expected = _flat(reference(*inputs[b]))
            got = np.load(work / f"outputs_{b}.npz")
            for key, ref in expected.items():
                value = torch.from_numpy(got[key]).float()
                ref = ref.float()
                err = float((value - ref).abs().max())
                cos = float(torch.nn.functional.cosine_similarity(value.reshape(1, -1), ref.reshape(1, -1)))
                worst_cos, worst_err = min(worst_cos, cos), max(worst_err, err)
                if cos < min_cos or err > rel * max(1.0, float(ref.abs().max())):
                    raise ExportError(f"output {key!r} at batch {b} differs from the reference: max abs error "
                                      f"{err:.3g}, cosine {cos:.6f} (needs cosine >= {min_cos})")
        return {"batches": batches, "max_abs_error": worst_err, "min_cosine": worst_cos,
                "fresh_process_latency_ms_p50": report["latency_ms_p50"],
                "fresh_process_latency_ms_p95": report["latency_ms_p95"],
                "fresh_process_latency_ms_p50_without_environment": plain["latency_ms_p50"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_verifier(work: Path, request: dict, env: dict) -> dict:
    (work / "request.json").write_text(json.dumps({**request, "work": str(work)}))
    done = subprocess.run([sys.executable, "-c", VERIFIER, str(work / "request.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"the bundle does not load or run without autoopt: {tail[0]}")
    return json.loads((work / "report.json").read_text())


# Runs in a fresh interpreter with autoopt made unimportable: proof that the bundle needs only stock
# onnxruntime / torch. Writes outputs_<batch>.npz (keyed by output path) and report.json (latency).
VERIFIER = r'''
import json, sys, time
sys.modules["autoopt"] = None
import numpy as np
request = json.load(open(sys.argv[1]))
bundle, work = request["bundle"], request["work"]
manifest = json.load(open(bundle + "/autoopt.json"))
names = [i["name"] for i in manifest["inputs"]]
if manifest["format"] == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = manifest["runtime"]["threads"]
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if manifest["runtime"]["graph_fusion"] == "none":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(bundle + "/" + manifest["model_file"], options, providers=["CPUExecutionProvider"])
    def run(inputs):
        return dict(zip(manifest["outputs"]["paths"], session.run(None, dict(zip(names, inputs)))))
else:
    import torch
    torch.set_num_threads(manifest["runtime"]["threads"])
    module = torch.jit.load(bundle + "/" + manifest["model_file"])
    dtype = getattr(torch, manifest["runtime"]["dtype"])
    def flat(value, prefix=""):
        if isinstance(value, torch.Tensor):
            return {prefix or "output": value.float().numpy()}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {}
        for key, item in items:
            out.update(flat(item, prefix + "." + str(key) if prefix else str(key)))
        return out
    def run(inputs):
        tensors = [torch.from_numpy(a) for a in inputs]
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
        with torch.no_grad():
            return flat(module(*tensors))
for b in request["batches"]:
    data = np.load(work + "/inputs_%d.npz" % b)
    inputs = [data["arr_%d" % i] for i in range(len(names))]
    np.savez(work + "/outputs_%d.npz" % b, **run(inputs))
data = np.load(work + "/inputs_%d.npz" % request["time_batch"])
inputs = [data["arr_%d" % i] for i in range(len(names))]
def block(min_calls, min_s):
    samples, started = [], time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - started < min_s:
        t = time.perf_counter(); run(inputs); samples.append((time.perf_counter() - t) * 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.95)]
block(20, 0.5)  # warm-up
blocks = sorted(block(30, 1.0) for _ in range(3))  # the median block: one slow stretch of the machine does not decide
json.dump({"latency_ms_p50": blocks[1][0], "latency_ms_p95": sorted(b[1] for b in blocks)[1]},
          open(work + "/report.json", "w"))
'''
