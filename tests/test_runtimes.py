"""The runtime conformance suite, over every registered runtime: the contract, predict matching eager
with the output structure kept, and for an exportable runtime a bundle that a fresh process without
autoopt, `autoopt.load` and MLflow all take. Then what is specific to each runtime."""

import os
import shutil

import numpy as np
import pytest
import torch

import autoopt
from autoopt.bundle import export as bundle
from autoopt import knobs, runtimes
from autoopt.trial import sensitivity
from autoopt.errors import Unsupported
from autoopt.pipeline import load_pipeline
from autoopt.runtimes import export_format
from autoopt.runtimes.base import ExportFormat, Runtime
from conftest import TINY_DICT, TINY_MLP


def one_mode_per_runtime() -> list[str]:
    """The first compile_mode value of each registered runtime module (the inductor modes share one)."""
    modes, seen = [], []
    for mode, runtime in runtimes.RUNTIMES.items():
        if runtime not in seen:
            seen.append(runtime)
            modes.append(mode)
    return modes


RUNTIME_MODES = one_mode_per_runtime()


def available(mode: str, device: str = "cpu") -> None:
    reason = runtimes.get(mode).unavailable(mode, device)
    if reason:
        pytest.skip(reason)


def build(compile_mode, pipe, tmp_path, device="cpu", **overrides):
    config = {**knobs.reference_config(), "compile_mode": compile_mode, **overrides}
    tmp_path.mkdir(parents=True, exist_ok=True)
    runtime = runtimes.get(compile_mode)
    ctx = runtimes.BuildContext(
        device=device, threads=1, workdir=str(tmp_path), example_inputs=pipe.make_inputs(2),
        batch_inputs=pipe.make_inputs(4), calibration=lambda: [pipe.make_inputs(8) for _ in range(4)],
        choose_layers=sensitivity.float_layers,
    )
    model = knobs.apply_model_knobs(pipe.build_model(), config, ctx, runtime.REALIZES)
    prepared = runtime.prepare(model, config, ctx)
    assert prepared.model_size_mb > 0 or compile_mode.startswith("inductor")
    return runtime.load(prepared, config, ctx), prepared


@pytest.mark.parametrize("mode", list(runtimes.RUNTIMES))
def test_every_runtime_satisfies_the_contract(mode):
    runtime = runtimes.get(mode)
    assert isinstance(runtime, Runtime)
    assert runtime.REALIZES <= set(knobs.REGISTRY)
    assert runtime.unavailable(mode, "cpu") is None or isinstance(runtime.unavailable(mode, "cpu"), str)
    assert runtime.conflict({**knobs.reference_config(), "compile_mode": mode}, "cpu") is None
    if runtime.EXPORT is not None:
        assert isinstance(runtime.EXPORT, ExportFormat) and runtime.EXPORT.model_file
        assert runtimes.get(runtimes.FORMATS[runtime.EXPORT.name]) is runtime


def test_every_compile_mode_value_has_a_registered_runtime():
    assert set(runtimes.RUNTIMES) == set(knobs.REGISTRY["compile_mode"].choices)


@pytest.mark.parametrize("mode", RUNTIME_MODES)
def test_predict_matches_eager_at_another_batch_size(mode, tmp_path):
    available(mode)
    pipe = load_pipeline(TINY_MLP)
    x = pipe.make_inputs(5)
    expected = pipe.build_model()(*x)
    torch.testing.assert_close(build(mode, pipe, tmp_path)[0].predict(*x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", RUNTIME_MODES)
def test_dict_outputs_and_two_inputs_keep_their_structure(mode, tmp_path):
    available(mode)
    pipe = load_pipeline(TINY_DICT)
    inputs = pipe.make_inputs(3)
    out = build(mode, pipe, tmp_path)[0].predict(*inputs)
    expected = pipe.build_model()(*inputs)
    assert isinstance(out, dict) and set(out) == {"logits", "pooled"}
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-5)


def flat(outputs: dict) -> dict:
    return {key: value.detach().numpy() for key, value in outputs.items()}


@pytest.fixture(params=sorted(runtimes.FORMATS))
def bundle_dir(request, tmp_path):
    """A bundle of an exportable runtime's artifact for the two-input, dict-output model."""
    fmt, pipe = request.param, load_pipeline(TINY_DICT)
    mode = runtimes.FORMATS[fmt]
    available(mode)
    _, prepared = build(mode, pipe, tmp_path / "build")
    config = {**knobs.reference_config(), "compile_mode": mode, "threads": 1}
    manifest = bundle.model_manifest(fmt, config, prepared, pipe.build_model(), pipe.make_inputs(2))
    out = tmp_path / "bundle"
    out.mkdir()
    spec = runtimes.export_format(fmt)
    shutil.copyfile(prepared.artifact, out / manifest["model_file"])
    for companion in spec.companions:
        shutil.copyfile(os.path.join(os.path.dirname(prepared.artifact), companion), out / companion)
    manifest.write(out)
    if spec.check is not None:
        spec.check(str(out / manifest["model_file"]))
    return out, spec, pipe


def test_an_exportable_runtime_s_bundle_runs_in_a_process_without_autoopt(bundle_dir, tmp_path):
    out, spec, pipe = bundle_dir
    work = tmp_path / "work"
    work.mkdir()
    inputs = pipe.make_inputs(3)
    np.savez(work / "inputs_3.npz", *[t.numpy() for t in inputs])
    report = bundle.run_verifier(work, out, spec, [3], 3, dict(os.environ))
    got, expected = np.load(work / "outputs_3.npz"), flat(pipe.build_model()(*inputs))
    assert set(got.files) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p95"]


def test_an_exportable_runtime_s_bundle_loads_with_autoopt_load_and_logs_to_mlflow(bundle_dir, tmp_path):
    from autoopt.bundle.logged_model import log_exported_model
    from autoopt.bundle.manifest import read as read_manifest
    from autoopt.report.tracking import Tracker, resolve_store

    out, spec, pipe = bundle_dir
    inputs = pipe.make_inputs(4)
    predicted, expected = autoopt.load(out)(*inputs), pipe.build_model()(*inputs)
    for key in expected:
        torch.testing.assert_close(predicted[key], expected[key], rtol=1e-4, atol=1e-5)
    uri, store = resolve_store(tmp_path / "store")
    tracker = Tracker(uri, store, "conformance")
    run_id = tracker.start_study("conformance", {})
    manifest = read_manifest(out, "the conformance test")
    model_uri = log_exported_model(uri, run_id, out, manifest)
    import mlflow

    # the logged pyfunc runs the bundle with its plain loader: the reference's outputs, keyed by output path
    got = mlflow.pyfunc.load_model(model_uri).predict({name: t.numpy() for name, t in zip(
        [i["name"] for i in manifest["inputs"]], inputs)})
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key].detach().numpy(), rtol=1e-4, atol=1e-5)
    requirements = open(mlflow.pyfunc.get_model_dependencies(model_uri)).read()
    for package in export_format(manifest["format"]).packages:
        assert f"{package}==" in requirements


def test_onnx_export_names_inputs_after_forward_and_has_a_dynamic_batch(tmp_path):
    import onnx

    _, prepared = build("onnxruntime", load_pipeline(TINY_DICT), tmp_path)
    graph = onnx.load(prepared.artifact).graph
    assert [i.name for i in graph.input] == ["features", "mask"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input)


@pytest.mark.parametrize("mode, op", [("dynamic_int8", "MatMulInteger"), ("static_int8", "QuantizeLinear"),
                                      ("weight_only_int8", "MatMulNBits")])
def test_onnxruntime_quantizes_the_graph(mode, op, tmp_path):
    import onnx

    pipe = load_pipeline(TINY_DICT)
    built, prepared = build("onnxruntime", pipe, tmp_path, quantization=mode)
    _, fp32 = build("onnxruntime", pipe, tmp_path)
    assert op in {node.op_type for node in onnx.load(prepared.artifact).graph.node}
    inputs = pipe.make_inputs(6)
    expected = pipe.build_model()(*inputs)
    torch.testing.assert_close(built.predict(*inputs)["logits"], expected["logits"], atol=0.1, rtol=0.1)
    assert prepared.artifact != fp32.artifact


@pytest.mark.parametrize("mode", ["onnxruntime", "torchscript"])
def test_artifacts_are_cached_by_what_determines_them(mode, tmp_path):
    pipe = load_pipeline(TINY_MLP)
    _, first = build(mode, pipe, tmp_path / "a", batch_size=1, threads=1)
    _, again = build(mode, pipe, tmp_path / "b", batch_size=64, threads=2)
    _, other = build(mode, pipe, tmp_path / "c", quantization="dynamic_int8")
    _, other_again = build(mode, pipe, tmp_path / "d", quantization="dynamic_int8", batch_size=8)
    assert first.artifact == again.artifact  # batch size and threads do not change the file
    assert other.artifact != first.artifact and other_again.artifact == other.artifact
    assert not any((tmp_path / "b").iterdir())  # a hit builds nothing


def test_transformer_fusion_says_when_there_is_nothing_to_fuse(tmp_path):
    with pytest.raises(Unsupported, match="no attention, LayerNorm or GELU pattern"):
        build("onnxruntime", load_pipeline(TINY_MLP), tmp_path, graph_fusion="transformer")


def test_weight_only_on_a_graph_without_matmul_is_unsupported(tmp_path):
    with pytest.raises(Unsupported, match="this graph has none"):
        build("onnxruntime", load_pipeline(TINY_MLP), tmp_path, quantization="weight_only_int8")


def test_torchscript_falls_back_to_scripting_for_data_dependent_control_flow(tmp_path):
    from autoopt.runtimes.torchscript import script_module

    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1

    model = Branchy().eval()
    positive, negative = torch.ones(2, 3), -2 * torch.ones(4, 3)
    module, how = script_module(model, (positive,), [(negative,)])
    assert how == "script"
    torch.testing.assert_close(module(negative), model(negative))


def test_a_trace_is_checked_on_odd_batch_sizes_and_calibration_data_before_it_is_trusted(tmp_path):
    class OddBranch(torch.nn.Module):  # the trial's batch and the calibration batches are even: one branch only
        def forward(self, x):
            return x * 2 if x.shape[0] % 2 else -x

    def make_inputs(b):
        return (torch.ones(b, 4),)

    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=make_inputs(2),
                                batch_inputs=make_inputs(8), calibration=lambda: [make_inputs(32)], make_inputs=make_inputs)
    config = {**knobs.reference_config(), "compile_mode": "torchscript"}
    runtime = runtimes.get("torchscript")
    prepared = runtime.prepare(OddBranch(), config, ctx)
    assert prepared.state["how"].startswith("script")  # the trace was wrong at batch 3, so it was scripted
    predict = runtime.load(prepared, config, ctx).predict
    assert torch.equal(predict(*make_inputs(3)), 2 * torch.ones(3, 4)) and torch.equal(predict(*make_inputs(4)), -torch.ones(4, 4))


def test_torchscript_ships_dynamic_int8(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    built, prepared = build("torchscript", pipe, tmp_path, quantization="dynamic_int8")
    assert prepared.artifact.endswith("model.pt")
    x = pipe.make_inputs(8)
    torch.testing.assert_close(built.predict(*x), pipe.build_model()(*x), atol=0.05, rtol=0.05)


def test_bf16_eager_returns_fp32_outputs(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    assert build("eager", pipe, tmp_path, precision="bf16")[0].predict(*pipe.make_inputs(4)).dtype == torch.float32


@pytest.mark.gpu
def test_eager_on_cuda_returns_cpu_outputs(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    built, _ = build("eager", pipe, tmp_path, device="cuda")
    assert built.predict(*pipe.make_inputs(4)).device.type == "cpu" and built.sync is not None


@pytest.mark.gpu
def test_inductor_reduce_overhead_on_cuda(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    built, _ = build("inductor_reduce_overhead", pipe, tmp_path, device="cuda")
    x = pipe.make_inputs(4)
    torch.testing.assert_close(built.predict(*x), pipe.build_model()(*x), rtol=1e-3, atol=1e-3)


def test_onnxruntime_io_binding_matches_feeding_arrays(tmp_path):
    """The binding path CUDA uses, run here on CPU pointers: same outputs, same structure, odd batch."""
    from autoopt.runtimes import onnxruntime as ort_runtime

    pipe = load_pipeline(TINY_DICT)
    _, prepared = build("onnxruntime", pipe, tmp_path)
    sess = ort_runtime.session(prepared.artifact, 1)
    names, spec = prepared.state["input_names"], prepared.state["output_spec"]
    features, mask = pipe.make_inputs(3)
    mask[0, 2:] = 0
    inputs = (features.transpose(1, 2).contiguous().transpose(1, 2), mask)  # a non-contiguous input is copied first
    bound = ort_runtime.bound_predictor(sess, names, spec, "cpu")(*inputs)
    fed = ort_runtime.predictor(sess, names, spec)(*(t.contiguous() for t in inputs))
    assert set(bound) == {"logits", "pooled"}
    for key in fed:
        torch.testing.assert_close(bound[key], fed[key])


@pytest.mark.gpu
def test_onnxruntime_on_cuda_binds_inputs_on_the_device(tmp_path):
    available("onnxruntime", "cuda")
    pipe = load_pipeline(TINY_DICT)
    built, _ = build("onnxruntime", pipe, tmp_path, device="cuda")
    inputs = pipe.make_inputs(5)
    out = built.predict(*(t.cuda() for t in inputs))
    expected = pipe.build_model()(*inputs)
    assert built.sync is not None and out["logits"].device.type == "cpu"
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-3, atol=1e-4)
