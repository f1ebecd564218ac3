"""Export: bundles that load and match in a fresh process without autoopt, with manifest and MLflow model."""

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import autoopt
from autoopt.cli import app
from conftest import FAST, TINY_DICT

NESTED = str(__import__("pathlib").Path(__file__).parent / "pipelines" / "tiny_nested.py")
SPACE = "batch_size: [1, 4]\ncompile_mode: [eager, onnxruntime, torchscript]\n"


@pytest.fixture(scope="module")
def onnx_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    (root / "space.yaml").write_text(SPACE)
    result = autoopt.search(TINY_DICT, space=str(root / "space.yaml"), trials=3, seed=0, study="exp-onnx",
                            tracking_uri=str(root / "store"), export="onnx", out=str(root / "bundle"),
                            register="tiny-dict", **{**FAST, "remeasure_top": 3})
    return result, root


def test_search_with_export_onnx_writes_a_verified_bundle(onnx_study):
    result, root = onnx_study
    assert all(t.config["compile_mode"] == "onnxruntime" for t in result.trials if not t.reference)
    bundle = root / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == ["autoopt.json", "example_inputs.npz", "model.onnx"]
    manifest = json.loads((bundle / "autoopt.json").read_text())
    assert manifest["format"] == "onnx" and manifest["config"]["compile_mode"] == "onnxruntime"
    assert [i["name"] for i in manifest["inputs"]] == ["features", "mask"]
    assert manifest["inputs"][0]["shape"] == ["batch", 5, 8]
    assert manifest["outputs"]["paths"] == ["logits", "pooled"]
    assert manifest["source"]["study"] == "exp-onnx" and manifest["source"]["mlflow_run_id"]
    assert {"torch", "onnxruntime", "autoopt"} <= set(manifest["versions"])
    v = manifest["verification"]
    assert v["min_cosine"] > 0.9999 and v["max_abs_error"] < 1e-4 and v["fresh_process_latency_ms_p50"] > 0
    assert abs(v["accuracy"] - manifest["metrics"]["accuracy"]) <= 0.005
    from autoopt.trial.measure import allocator_env

    assert manifest["runtime"]["environment"] == allocator_env()
    assert v["fresh_process_latency_ms_p50_without_environment"] > 0
    assert manifest["remeasured"]["latency_ms_p50"] > 0  # the winner took part in the interleaved re-measurement


def test_load_restores_the_dict_structure(onnx_study, monkeypatch):
    _, root = onnx_study
    pinned = []
    monkeypatch.setattr("autoopt.trial.measure.pin_allocator", pinned.append)
    pipe = autoopt.load_pipeline(TINY_DICT)
    inputs = pipe.make_inputs(6)
    out = autoopt.load(root / "bundle")(*inputs)
    expected = pipe.build_model()(*inputs)
    assert isinstance(out, dict) and set(out) == {"logits", "pooled"}
    torch.testing.assert_close(out["logits"], expected["logits"], rtol=1e-4, atol=1e-5)
    manifest = json.loads((root / "bundle" / "autoopt.json").read_text())
    assert pinned == [manifest["runtime"]["environment"]]  # measured with these malloc settings: load applies them


def test_exported_model_is_logged_and_registered(onnx_study):
    result, root = onnx_study
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'store'}/mlflow.db")
    versions = client.search_model_versions("name='tiny-dict'")
    assert len(versions) == 1
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"export", "pareto_front.csv"}
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'store'}/mlflow.db")
    loaded = mlflow.pyfunc.load_model("models:/tiny-dict/1")
    pipe = autoopt.load_pipeline(TINY_DICT)
    inputs = pipe.make_inputs(5)  # another batch size than the example's: the batch axis is dynamic
    got = loaded.predict({"features": inputs[0].numpy(), "mask": inputs[1].numpy()})
    expected = pipe.build_model()(*inputs)
    assert set(got) == {"logits", "pooled"}  # the bundle's output paths
    for key in got:  # the reference's outputs within the export tolerance (exact here: fp32 ONNX)
        np.testing.assert_allclose(got[key], expected[key].detach().numpy(), rtol=1e-4, atol=1e-5)
    manifest = json.loads((root / "bundle" / "autoopt.json").read_text())
    model = mlflow.models.get_model_info("models:/tiny-dict/1")
    assert [(i.name, i.shape) for i in model.signature.inputs.inputs] == [("features", (-1, 5, 8)), ("mask", (-1, 5))]
    assert model.saved_input_example_info is not None
    requirements = mlflow.pyfunc.get_model_dependencies("models:/tiny-dict/1")
    text = open(requirements).read()
    assert f"onnxruntime=={manifest['versions']['onnxruntime']}" in text and "numpy==" in text
    logged = mlflow.get_logged_model(model.model_id)
    assert logged.params["compile_mode"] == "onnxruntime" and logged.params["batch_size"] == str(manifest["config"]["batch_size"])
    assert {m.key for m in logged.metrics} >= {"throughput_samples_per_s", "latency_ms_p95", "accuracy",
                                                "remeasured_throughput_samples_per_s"}


@pytest.mark.slow
def test_mlflow_serves_the_registered_bundle_over_http(onnx_study):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    _, root = onnx_study
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'store'}/mlflow.db"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny-dict/1",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not start within 120 s"
                time.sleep(0.5)
        pipe = autoopt.load_pipeline(TINY_DICT)
        inputs = pipe.make_inputs(3)
        body = json.dumps({"inputs": {"features": inputs[0].tolist(), "mask": inputs[1].tolist()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
        expected = pipe.build_model()(*inputs)
        np.testing.assert_allclose(np.array(predictions["logits"]), expected["logits"].detach().numpy(), rtol=1e-4,
                                   atol=1e-5)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_a_format_the_trial_cannot_carry_names_the_closest_exportable_trial(onnx_study):
    result, root = onnx_study
    number = next(t.number for t in result.trials if t.config["compile_mode"] == "onnxruntime")
    with pytest.raises(autoopt.ConfigError, match="has no feasible trial that ran on torchscript"):
        autoopt.export("exp-onnx", format="torchscript", out=str(root / "x"), tracking_uri=str(root / "store"))
    with pytest.raises(autoopt.ConfigError, match=rf"Trial 0 ran on compile_mode=eager, which format='onnx' cannot "
                                                  rf"carry \(it needs compile_mode=onnxruntime\): the closest exportable trial is {number}"):
        autoopt.export("exp-onnx", trial=0, format="onnx", out=str(root / "x"), tracking_uri=str(root / "store"))
    assert not (root / "x").exists()


def test_a_failed_export_leaves_nothing_behind(onnx_study, monkeypatch):
    from autoopt.bundle import export as bundle

    _, root = onnx_study

    def broken(*args, **kwargs):
        raise bundle.ExportError("simulated verification failure")

    monkeypatch.setattr(bundle, "_verify", broken)
    with pytest.raises(bundle.ExportError, match="simulated"):
        autoopt.export("exp-onnx", format="onnx", out=str(root / "failed"), tracking_uri=str(root / "store"))
    assert not (root / "failed").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".failed")]


def test_torchscript_bundle_of_nested_outputs_and_a_data_dependent_branch(tmp_path, write_file):
    space = write_file("space.yaml", SPACE)
    result = autoopt.search(NESTED, space=space, trials=3, seed=0, study="exp-ts", tracking_uri=str(tmp_path / "store"),
                            export="torchscript", out=str(tmp_path / "bundle"), **FAST)
    manifest = result.exported.manifest
    assert manifest["format"] == "torchscript" and (tmp_path / "bundle" / "model.pt").exists()
    assert manifest["outputs"]["paths"] == ["logits", "extra.0", "extra.1"]
    assert manifest["built_by"].startswith("script")  # the trace was caught taking one branch
    pipe = autoopt.load_pipeline(NESTED)
    predict = autoopt.load(tmp_path / "bundle")
    for batch in (3, 4):  # odd and even batches take different branches: scripted, not traced
        inputs = pipe.make_inputs(batch)
        out, expected = predict(*inputs), pipe.build_model()(*inputs)
        assert isinstance(out["extra"], tuple)
        torch.testing.assert_close(out["logits"], expected["logits"], rtol=1e-4, atol=1e-5)


def test_cli_export_and_trials(onnx_study):
    _, root = onnx_study
    runner = CliRunner()
    listed = runner.invoke(app, ["trials", "--study", "exp-onnx", "--tracking-uri", str(root / "store")])
    assert listed.exit_code == 0 and "Study exp-onnx" in listed.output and "COMPLETE" in listed.output
    done = runner.invoke(app, ["export", "--study", "exp-onnx", "--format", "onnx", "--out", str(root / "cli"),
                               "--tracking-uri", str(root / "store")])
    assert done.exit_code == 0, done.output
    assert "verified in a fresh process without autoopt" in done.output and (root / "cli" / "model.onnx").exists()
    assert "serving_rss_mb" in done.output and "(peak resident memory of that process)" in " ".join(done.output.split())
    assert "Run it with MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728" in " ".join(done.output.split())
    bad = runner.invoke(app, ["export", "--study", "exp-onnx", "--format", "tflite", "--tracking-uri", str(root / "store")])
    assert bad.exit_code == 2 and "--format must be one of [aoti, onnx, openvino, torchscript]. Got 'tflite'." in bad.output
    missing = runner.invoke(app, ["trials", "--study", "nope", "--tracking-uri", str(root / "store")])
    assert missing.exit_code == 2 and "No study named 'nope'" in missing.output


def test_bench_re_times_a_bundle_in_fresh_processes_beside_the_search_s_figure(onnx_study, tmp_path):
    _, root = onnx_study
    runner = CliRunner()
    done = runner.invoke(app, ["bench", str(root / "bundle"), "--batch", "5", "--processes", "2", "--json"])
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout)
    manifest = json.loads((root / "bundle" / "autoopt.json").read_text())
    assert figures["batch"] == 5 and len(figures["per_process_p50_ms"]) == 2 and figures["throughput"] > 0
    assert figures["search"]["latency_ms_p50"] == manifest["remeasured"]["latency_ms_p50"]
    assert figures["search"]["batch"] == manifest["config"]["batch_size"]
    assert figures["cpu"].split(",")[0] in figures["built_on"]
    # an ONNX Runtime process that never imports torch: tens of MB, not the hundreds torch maps
    assert 10 < figures["serving_rss_mb"] < 400 and figures["export_serving_rss_mb"] == \
        manifest["verification"]["serving_rss_mb"]
    text = runner.invoke(app, ["bench", str(root / "bundle"), "--processes", "1"])
    assert text.exit_code == 0 and "median of 1 fresh processes: p50" in " ".join(text.output.split())
    assert "serving_rss_mb" in text.output
    assert "The search recorded p50" in " ".join(text.output.split())
    missing = runner.invoke(app, ["bench", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "the folder does not exist. Expected a bundle written by" in missing.output
    old = tmp_path / "old"
    old.mkdir()
    for f in ("autoopt.json", "model.onnx"):
        (old / f).write_bytes((root / "bundle" / f).read_bytes())
    earlier = runner.invoke(app, ["bench", str(old)])
    assert earlier.exit_code == 2 and "has no example_inputs.npz" in earlier.output


def test_a_study_measured_on_cuda_is_not_exported_as_something_else():
    import optuna

    from autoopt.bundle.export import select_trial

    study = optuna.create_study(study_name="gpu-study")
    study.set_user_attr("search", {"device": "cuda"})
    with pytest.raises(autoopt.ConfigError, match="ran its trials on cuda; export builds, verifies and re-times on the CPU"):
        select_trial(study, None, "onnx")


def test_onnxruntime_without_its_cuda_provider_is_not_labelled_cuda(tmp_path):
    import onnxruntime
    import torch

    from autoopt.errors import Unsupported
    from autoopt.runtimes.onnxruntime import export_onnx, session

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA build")
    path = str(tmp_path / "m.onnx")
    export_onnx(torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),), path)
    with pytest.raises(Unsupported, match="the CUDA execution provider is not active"):
        session(path, 1, "cuda")


def test_an_approximate_export_is_verified_against_the_trial_s_own_model(tmp_path):
    """int8 or pruning may take a model further from the original than any fixed cosine while its metric holds:
    its file is held to what the trial's model computes, its distance to the original recorded."""
    import copy
    import os
    import shutil

    from autoopt.bundle import export as bundle_module
    from autoopt import knobs, runtimes
    from autoopt.errors import ExportError
    from autoopt.pipeline import load_pipeline
    from conftest import TINY_DICT

    pipe = load_pipeline(TINY_DICT)
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=pipe.make_inputs(2),
                                batch_inputs=pipe.make_inputs(4))
    prepared = runtimes.get("onnxruntime").prepare(pipe.build_model(), knobs.reference_config(), ctx)
    out = tmp_path / "bundle"
    out.mkdir()
    shutil.copyfile(prepared.artifact, out / "model.onnx")
    far = copy.deepcopy(pipe.build_model())  # stands for the original, far from what the file computes
    with torch.no_grad():
        for p in far.parameters():
            p.add_(torch.randn_like(p) * 3)
    for overrides, passes in (({"quantization": "dynamic_int8"}, True), ({}, False)):
        config = {**knobs.reference_config(), "compile_mode": "onnxruntime", "threads": 1, **overrides}
        manifest = bundle_module.model_manifest("onnx", config, prepared, pipe.build_model(), pipe.make_inputs(2))
        manifest.write(out)
        if not passes:
            with pytest.raises(ExportError, match=r"differs from the original model: max abs error .* \(needs cosine"):
                bundle_module._verify(out, manifest, pipe, far, 3, pipe.build_model())
            continue
        v = bundle_module._verify(out, manifest, pipe, far, 3, pipe.build_model())
        assert v["compared_with"] == "the trial's model, built in this process" and v["min_cosine"] > 0.9999
        assert v["min_cosine_to_original"] < 0.95
    assert sorted(os.listdir(out)) == ["autoopt.json", "model.onnx"]
