"""What is specific to the openvino runtime: honest precision hints, NNCF int8, its conflicts, the IR
cache, and the MLflow pyfunc of an exported IR. (The conformance suite in test_runtimes.py covers the rest.)"""

import os
import shutil

import numpy as np
import pytest
import torch

from autoopt import knobs, runtimes
from autoopt.trial import sensitivity
from autoopt.pipeline import load_pipeline
from conftest import TINY_DICT, TINY_MLP

openvino_runtime = runtimes.get("openvino")
pytestmark = pytest.mark.skipif(openvino_runtime.unavailable("openvino", "cpu") is not None,
                                reason="openvino is not installed")


def build(pipe, tmp_path, **overrides):
    config = {**knobs.reference_config(), "compile_mode": "openvino", "threads": 1, **overrides}
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=pipe.make_inputs(2),
                                batch_inputs=pipe.make_inputs(4),
                                calibration=lambda: [pipe.make_inputs(8) for _ in range(4)],
                                choose_layers=sensitivity.float_layers)
    model = knobs.apply_model_knobs(pipe.build_model(), config, ctx, openvino_runtime.REALIZES)
    prepared = openvino_runtime.prepare(model, config, ctx)
    return openvino_runtime.load(prepared, config, ctx), prepared


def compiled_precision(prepared, precision: str) -> str:
    compiled = openvino_runtime._core().compile_model(prepared.artifact, "CPU", openvino_runtime.properties(1, precision))
    return str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def test_fp32_really_runs_f32_and_bf16_asks_for_bf16(tmp_path):
    _, prepared = build(load_pipeline(TINY_MLP), tmp_path)
    assert compiled_precision(prepared, "fp32") == "<Type: 'float32'>"
    if openvino_runtime.cpu_supports_bf16():
        assert compiled_precision(prepared, "bf16") == "<Type: 'bfloat16'>"


def test_the_ir_is_shared_by_precision_threads_and_batch_size(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    _, first = build(pipe, tmp_path / "a")
    _, again = build(pipe, tmp_path / "b", precision="bf16", threads=2, batch_size=64)
    assert first.artifact == again.artifact


def test_bf16_without_bf16_units_and_dynamic_int8_are_conflicts(monkeypatch):
    config = {**knobs.reference_config(), "compile_mode": "openvino"}
    monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda: False)
    assert "needs a CPU with bf16 units" in knobs.conflict({**config, "precision": "bf16"}, "cpu")
    assert "dynamic_int8 is not an OpenVINO mode" in knobs.conflict({**config, "quantization": "dynamic_int8"}, "cpu")
    assert knobs.conflict({**config, "quantization": "static_int8"}, "cpu") is None
    assert "CPU" in openvino_runtime.unavailable("openvino", "cuda")


@pytest.mark.parametrize("mode", ["static_int8", "weight_only_int8"])
def test_nncf_quantizes_the_ir_and_stays_close(mode, tmp_path):

    pipe = load_pipeline(TINY_DICT)
    built, prepared = build(pipe, tmp_path / mode, quantization=mode)
    _, fp32 = build(pipe, tmp_path / "fp32")
    assert prepared.artifact != fp32.artifact
    ops = {op.get_type_name() for op in openvino_runtime._core().read_model(prepared.artifact).get_ops()}
    assert "FakeQuantize" in ops if mode == "static_int8" else "Convert" in ops
    inputs = pipe.make_inputs(6)
    expected = pipe.build_model()(*inputs)
    torch.testing.assert_close(built.predict(*inputs)["logits"], expected["logits"], atol=0.15, rtol=0.15)


@pytest.mark.slow
def test_the_logged_pyfunc_loads_and_predicts_without_autoopt(tmp_path):
    import mlflow

    from autoopt.bundle import export as bundle
    from autoopt.bundle.logged_model import log_exported_model
    from autoopt.report.tracking import Tracker, resolve_store

    pipe = load_pipeline(TINY_DICT)
    _, prepared = build(pipe, tmp_path / "build")
    config = {**knobs.reference_config(), "compile_mode": "openvino", "threads": 1}
    manifest = bundle.model_manifest("openvino", config, prepared, pipe.build_model(), pipe.make_inputs(2))
    out = tmp_path / "bundle"
    out.mkdir()
    for name in ("model.xml", "model.bin"):
        shutil.copyfile(os.path.join(os.path.dirname(prepared.artifact), name), out / name)
    manifest.write(out)
    uri, store = resolve_store(tmp_path / "store")
    run_id = Tracker(uri, store, "ov").start_study("ov", {})
    model = mlflow.pyfunc.load_model(log_exported_model(uri, run_id, out, manifest))
    inputs = pipe.make_inputs(3)
    got = model.predict({"features": inputs[0].numpy(), "mask": inputs[1].numpy()})
    expected = pipe.build_model()(*inputs)
    np.testing.assert_allclose(got["logits"], expected["logits"].detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["pooled"], expected["pooled"].detach().numpy(), rtol=1e-4, atol=1e-5)


SIGNAL_AFTER_CORES = """
import gc, os, signal, sys, threading, time
import openvino
from autoopt.runtimes import openvino as ov

manifest = {"model_file": "model.xml", "runtime": {"threads": 1, "inference_precision": "f32"},
            "outputs": {"paths": ["output"]}}
run = ov.plain_loader(sys.argv[1], manifest)  # as an MLflow pyfunc does, beside autoopt
first, second = ov._core(), ov._core()
models = [core.compile_model(sys.argv[1] + "/model.xml", "CPU", ov.properties(1, "fp32")) for core in (first, second)]
print(first is second is openvino._shared_core)
del run, models; gc.collect()  # Cores destroyed in the order they were made: the order that crashed
del first; gc.collect()
del second; gc.collect()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    time.sleep(10)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_after_openvino_models_come_and_go_is_an_interrupt_not_a_crash(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core and restores it on destruction; two
    Cores destroyed first-in-first-out left the process on an unmapped stack, and Ctrl-C segfaulted
    (it took a whole test session down). One shared Core per process (runtimes.openvino._core)."""
    import subprocess
    import sys

    _, prepared = build(load_pipeline(TINY_MLP), tmp_path)
    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_CORES, os.path.dirname(prepared.artifact)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.split()) == (0, ["True", "interrupted"]), done.stderr[-2000:]
