"""The shared knob conformance suite runs on every registered knob; knob-specific tests follow."""

from pathlib import Path

import pytest
import torch
from torch.utils import _pytree as pytree

import autoopt
from autoopt import knobs, runtimes
from autoopt.trial import sensitivity
from autoopt.errors import ConfigError, Unsupported
from autoopt.knobs import REGISTRY
from autoopt.pipeline import load_pipeline
from autoopt.study.space import load_space

KNOB_NAMES = list(REGISTRY)


class Tiny(torch.nn.Module):
    """Linear layers to quantize and prune, repeated blocks to drop, a dict with a nested tuple to keep."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = torch.nn.Linear(8, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 3)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(32, 32) for _ in range(2)])

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        h = torch.relu(self.fc2(h))
        return {"logits": self.head(h), "aux": (h.sum(-1),)}


def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


TINY = autoopt.Pipeline("tiny", tiny, lambda b: (torch.randn(b, 8),))  # the teacher of distillation
MASKED = load_pipeline(Path(__file__).parent / "pipelines" / "tiny_masked.py")


def ctx(tmp_path=None, pipeline=TINY):
    return runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path or "."),
                                 example_inputs=pipeline.make_inputs(2), batch_inputs=pipeline.make_inputs(4),
                                 pipeline=pipeline, calibration=lambda: [pipeline.make_inputs(16) for _ in range(4)],
                                 choose_layers=sensitivity.float_layers)


def subject(knob):
    """The pipeline the suite applies `knob` to: Tiny, or a tiny masked text model for a knob that Tiny cannot
    use (Knob.requires: trim_padding needs a padding mask)."""
    return TINY if knob.requires(TINY) is None else MASKED


# Numeric knobs whose range ends would take long to apply: a value off the baseline is enough
SHORT = {"threads": [1], "distill_steps": [0, 3]}


def values_of(knob):
    if knob.choices is not None:
        return [v for v in knob.choices if not knob.unavailable(v, "cpu")]
    if knob.name in SHORT:
        return SHORT[knob.name]
    low, high = knob.bounds
    return [low, (low + high) / 2, high]


def structure(out):
    return pytree.tree_structure(out)


@pytest.mark.parametrize("name", KNOB_NAMES)
def test_baseline_is_in_the_domain_available_and_identity(name):
    knob = REGISTRY[name]
    assert knob.contains(knob.baseline) and knob.doc
    assert knob.unavailable(knob.baseline, "cpu") is None
    model, x = tiny(), torch.randn(4, 8)
    expected = model(x)
    out = knobs.apply_model_knobs(model, knobs.reference_config(), ctx())(x)
    assert structure(out) == structure(expected)
    for a, b in zip(pytree.tree_leaves(out), pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", KNOB_NAMES)
def test_every_value_applies_and_keeps_structure_and_finiteness(name, tmp_path):
    knob = REGISTRY[name]
    for value in values_of(knob):
        config = {**knobs.reference_config(), **knob.relevant_in, name: value}
        assert knob.relevant(config), f"{name}: relevant_in does not make it relevant"
        if knobs.conflict(config, "cpu"):
            continue
        pipeline = subject(knob)
        model = knobs.apply_model_knobs(pipeline.build_model(), config, ctx(tmp_path, pipeline))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        inputs = pipeline.make_inputs(4)
        with torch.no_grad():
            out = model(*(t.to(dtype) if t.is_floating_point() else t for t in inputs))
        assert structure(out) == structure(pipeline.build_model()(*inputs)), (name, value)
        assert all(torch.isfinite(t.float()).all() for t in pytree.tree_leaves(out)), (name, value)


@pytest.mark.parametrize("name", KNOB_NAMES)
def test_an_out_of_domain_value_is_a_clear_error(name, write_file):
    knob = REGISTRY[name]
    bad = "bogus" if knob.choices is not None else knob.bounds[1] + 1
    path = write_file("space.yaml", f"{name}: [{bad}]\n")
    assert knob.tasks and set(knob.tasks) <= set(knobs.TASKS)
    with pytest.raises(ConfigError) as info:
        load_space(path, "cpu", knob.tasks[0])
    assert str(info.value).startswith(f"The '{name}' entry of {path} must contain only values {knob.describe_domain()}")


def test_reference_config_is_every_baseline_and_valid():
    ref = knobs.reference_config()
    assert (ref["precision"], ref["batch_size"], ref["compile_mode"], ref["quantization"]) == ("fp32", 1, "eager", "none")
    assert ref["pruning_amount"] == 0.0
    assert knobs.conflict(ref, "cpu") is None


def test_canonical_form_ignores_knobs_that_change_nothing():
    ref = knobs.reference_config()
    assert knobs.canonical({**ref, "quant_granularity": "per_tensor"}) == ref
    assert knobs.canonical({**ref, "pruning_method": "structured"}) == ref
    assert knobs.canonical({**ref, "graph_fusion": "none"}) == ref
    onnx = {**ref, "compile_mode": "onnxruntime", "graph_fusion": "none"}
    assert knobs.canonical(onnx) == onnx


@pytest.mark.parametrize("config, words", [
    ({"precision": "bf16", "quantization": "static_int8"}, "int8 quantization starts from the fp32 model"),
    ({"precision": "bf16", "quantization": "dynamic_int8"}, "int8 quantization starts from the fp32 model"),
    ({"precision": "bf16", "compile_mode": "onnxruntime"}, "onnxruntime runs the fp32 export"),
    ({"quantization": "weight_only_int8", "compile_mode": "torchscript"}, "cannot be traced by TorchScript"),
    ({"quantization": "static_int8", "compile_mode": "inductor", "quant_granularity": "per_tensor"}, "per channel only"),
    ({"quantization": "weight_only_int8", "compile_mode": "onnxruntime", "quant_granularity": "per_tensor"}, "MatMulNBits"),
])
def test_impossible_combinations_are_conflicts(config, words):
    assert words in knobs.conflict({**knobs.reference_config(), **config}, "cpu")


def test_no_quantized_engine_is_a_conflict(monkeypatch):
    from autoopt.knobs import quantization

    monkeypatch.setattr(quantization, "supported_engines", lambda: ["qnnpack"])
    reason = knobs.conflict({**knobs.reference_config(), "quantization": "dynamic_int8"}, "cpu")
    assert "NoQEngine" in reason
    assert knobs.conflict({**knobs.reference_config(), "quantization": "dynamic_int8",
                           "compile_mode": "onnxruntime"}, "cpu") is None


def test_unavailable_values():
    assert "CUDA" in REGISTRY["precision"].unavailable("fp16", "cpu")
    assert "CUDA" in REGISTRY["compile_mode"].unavailable("inductor_reduce_overhead", "cpu")
    assert REGISTRY["threads"].unavailable(4096, "cpu")


def test_l1_unstructured_sparsity_equals_the_amount():
    config = {**knobs.reference_config(), "pruning_amount": 0.5, "pruning_method": "l1_unstructured"}
    model = knobs.apply_model_knobs(tiny(), config, ctx())
    for layer in (model.fc1, model.fc2, model.head):
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_structured_pruning_removes_neurons_and_keeps_outputs():
    config = {**knobs.reference_config(), "pruning_amount": 0.5, "pruning_method": "structured"}
    before = sum(p.numel() for p in tiny().parameters())
    model = knobs.apply_model_knobs(tiny(), config, ctx())
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before
    assert model.fc1.out_features == 16 and model.head.out_features == 3
    assert model(torch.randn(5, 8))["logits"].shape == (5, 3)


def test_structured_pruning_that_would_change_an_output_is_unsupported():
    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 16)

        def forward(self, x):
            return torch.relu(self.fc(x)) * 2  # the pruned width is the output width

    config = {**knobs.reference_config(), "pruning_amount": 0.5, "pruning_method": "structured"}
    model = knobs.apply_model_knobs(Pooled().eval(), config, ctx())
    assert model.fc.out_features == 16  # the output layer is kept whole


def test_structured_pruning_keeps_attention_widths():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    x = torch.randn(2, 5, 32)
    c = runtimes.BuildContext(device="cpu", threads=1, workdir=".", example_inputs=(x,), batch_inputs=(x,))
    config = {**knobs.reference_config(), "pruning_amount": 0.5, "pruning_method": "structured"}
    pruned = knobs.apply_model_knobs(model, config, c)
    block = pruned[0].layers[0]
    assert block.self_attn.embed_dim == 32 and block.linear1.out_features == 32
    assert pruned(torch.randn(3, 5, 32)).shape == (3, 5, 32)


@pytest.mark.parametrize("mode, runtime, quantized", [
    ("dynamic_int8", "eager", "torch.ao.nn.quantized.dynamic"),
    ("static_int8", "eager", "torch.ao.nn.quantized"),
    ("weight_only_int8", "eager", None),
])
def test_torch_quantization_modes(mode, runtime, quantized):
    config = {**knobs.reference_config(), "quantization": mode, "compile_mode": runtime}
    model = knobs.apply_model_knobs(tiny(), config, ctx())
    if quantized:
        assert any(type(m).__module__.startswith(quantized) for m in model.modules())
    x = torch.randn(4, 8)
    torch.testing.assert_close(model(x)["logits"], tiny()(x)["logits"], atol=0.05, rtol=0.05)


def test_dynamic_int8_without_linear_layers_is_unsupported():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)).eval()
    config = {**knobs.reference_config(), "quantization": "dynamic_int8"}
    with pytest.raises(Unsupported, match="this model has none"):
        knobs.apply_model_knobs(conv, config, ctx())


def test_precision_bf16_casts():
    model = knobs.apply_model_knobs(tiny(), {**knobs.reference_config(), "precision": "bf16"}, ctx())
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.gpu
def test_fp16_on_cuda():
    assert REGISTRY["precision"].unavailable("fp16", "cuda") is None
    model = knobs.apply_model_knobs(tiny().cuda(), {**knobs.reference_config(), "precision": "fp16"}, ctx())
    assert model(torch.randn(2, 8, device="cuda", dtype=torch.float16))["logits"].dtype == torch.float16


def test_quantized_transformer_runs_the_regular_path():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 5, 32)
    config = {**knobs.reference_config(), "quantization": "dynamic_int8"}
    quantized = knobs.apply_model_knobs(model, config, ctx())
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), atol=0.1, rtol=0.1)
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the call


def test_knob_facts_decide_numerics_reuse_export_tolerance_and_warm_start():
    from autoopt import knobs

    assert knobs.numerics_free() == ("batch_size", "threads")
    ref = knobs.reference_config()
    assert knobs.export_tolerance({**ref, "batch_size": 64, "compile_mode": "onnxruntime"}) == knobs.EXACT
    assert knobs.export_tolerance({**ref, "precision": "bf16"}) == (0.999, 0.05)
    assert knobs.export_tolerance({**ref, "quantization": "dynamic_int8"}) == (0.95, float("inf"))
    assert knobs.export_tolerance({**ref, "pruning_amount": 0.3}) == (0.95, float("inf"))
    assert knobs.warm_start_seeds("infer", "cpu") == [
        {"quantization": "static_int8", "compile_mode": "torchscript"},
        {"quantization": "dynamic_int8", "compile_mode": "onnxruntime"},
        {"compile_mode": "onnxruntime"}]
    assert knobs.warm_start_seeds("train", "cpu") == [{"precision": "bf16"}]


def test_warm_start_entries_that_need_a_cpu_feature_come_first_where_it_exists():
    from autoopt import knobs

    general = knobs.warm_start_seeds("infer", "cpu")
    amx = knobs.warm_start_seeds("infer", "cpu", ["AMX-BF16", "AMX-INT8"])
    auto = {"quantization": "static_int8", "int8_layers": "auto", "compile_mode": "openvino"}  # int8 where it holds
    assert amx[:4] == [{"quantization": "static_int8", "compile_mode": "openvino"}, {"precision": "bf16", "compile_mode": "openvino"},
                       {"precision": "bf16", "compile_mode": "inductor"}, {**auto, "precision": "bf16"}]
    assert amx[4:] == general
    vnni = knobs.warm_start_seeds("infer", "cpu", ["AVX512-VNNI", "AVX512-BF16"])  # bf16 without AMX lost to f32
    assert vnni == [{"quantization": "static_int8", "compile_mode": "openvino"}, *general]
    assert not any(seed.get("precision") == "bf16" for seed in general)
