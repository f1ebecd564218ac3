"""Every runtime: prepare + load a candidate; predict must match eager and keep the output structure."""

import pytest
import torch

from autoopt import runtimes
from autoopt.pipeline import load_pipeline
from conftest import TINY_DICT, TINY_MLP


def built(name, pipeline, tmp_path, device="cpu"):
    runtime = runtimes.get(name)
    ctx = runtimes.BuildContext(device=device, threads=1, workdir=str(tmp_path))
    prepared = runtime.prepare(pipeline.build_model(), pipeline.make_inputs(2), {}, ctx)
    assert prepared.model_size_mb > 0
    return runtime.load(prepared, {}, ctx)


@pytest.mark.parametrize("name", list(runtimes.RUNTIMES))
def test_predict_matches_eager_at_another_batch_size(name, tmp_path):
    pipe = load_pipeline(TINY_MLP)
    x = pipe.make_inputs(5)
    expected = pipe.build_model()(*x)
    torch.testing.assert_close(built(name, pipe, tmp_path).predict(*x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(runtimes.RUNTIMES))
def test_dict_outputs_and_two_inputs_keep_their_structure(name, tmp_path):
    pipe = load_pipeline(TINY_DICT)
    inputs = pipe.make_inputs(3)
    out = built(name, pipe, tmp_path).predict(*inputs)
    expected = pipe.build_model()(*inputs)
    assert isinstance(out, dict) and set(out) == {"logits", "pooled"}
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-5)


def test_onnx_export_names_inputs_after_forward_and_has_a_dynamic_batch(tmp_path):
    import onnx

    pipe = load_pipeline(TINY_DICT)
    runtime = runtimes.get("onnxruntime")
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path))
    prepared = runtime.prepare(pipe.build_model(), pipe.make_inputs(2), {}, ctx)
    graph = onnx.load(prepared.artifact).graph
    assert [i.name for i in graph.input] == ["features", "mask"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input)


def test_bf16_eager_returns_fp32_outputs(tmp_path):
    from autoopt.knobs import apply_model_knobs

    pipe = load_pipeline(TINY_MLP)
    runtime = runtimes.get("eager")
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path))
    model = apply_model_knobs(pipe.build_model(), {"precision": "bf16"}, "cpu")
    predict = runtime.load(runtime.prepare(model, pipe.make_inputs(2), {}, ctx), {}, ctx).predict
    assert predict(*pipe.make_inputs(4)).dtype == torch.float32


@pytest.mark.gpu
def test_eager_on_cuda_returns_cpu_outputs(tmp_path):
    pipe = load_pipeline(TINY_MLP)
    b = built("eager", pipe, tmp_path, device="cuda")
    out = b.predict(*pipe.make_inputs(4))
    assert out.device.type == "cpu" and b.sync is not None
