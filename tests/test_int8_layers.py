"""int8_layers: the layer sensitivity ranking, the mixed int8 models each int8 path builds, the attention
recipe on graphs the real converters make, and a mixed model shipped as measured."""

import json

import pytest
import torch
from torch import nn

import autoopt
from autoopt import knobs, runtimes
from autoopt.trial import sensitivity
from autoopt.trial.accuracy import cosine_fidelity
from autoopt.trial.build import build_candidate
from autoopt.report.artifacts import sensitivity_files
from autoopt.report.results import TrialRecord, TrialState
from autoopt.pipeline import load_pipeline
from autoopt.runtimes.base import has_attention
from conftest import FAST, TESTS

FRAGILE = "mid"
REALIZED_BY = ("eager", "torchscript", "onnxruntime", "openvino")
FRAGILE_FILE = str(TESTS / "pipelines" / "tiny_fragile.py")
PIPELINE = load_pipeline(FRAGILE_FILE)
make_inputs, calibration_data, Fragile = PIPELINE.make_inputs, PIPELINE.calibration_data, PIPELINE.build_model


def config(mode: str, **overrides) -> dict:
    return {**knobs.reference_config(), "compile_mode": mode, "quantization": "static_int8", "threads": 1, **overrides}


def available(mode: str) -> None:
    reason = runtimes.get(mode).unavailable(mode, "cpu")
    if reason:
        pytest.skip(reason)


def built(mode: str, tmp_path, **overrides):
    cfg = config(mode, **overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    runtime, prepared, ctx, _ = build_candidate(PIPELINE, cfg, "cpu", 1, str(tmp_path), make_inputs(4))
    return runtime.load(prepared, cfg, ctx).predict, ctx


def fidelity(predict) -> float:
    x = make_inputs(64)
    with torch.inference_mode():
        return cosine_fidelity(predict(*x), Fragile()(*x))


@pytest.mark.parametrize("mode", ["eager", "onnxruntime", "openvino"])
def test_the_ranking_puts_the_fragile_layer_first(mode, tmp_path):
    available(mode)
    model = Fragile()
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=make_inputs(2),
                                pipeline=PIPELINE, calibration=calibration_data)
    ranked = sensitivity.ranking(model, config(mode), ctx)
    assert ranked["units"][0] == FRAGILE, ranked
    assert ranked["sensitivity"][FRAGILE] > 0.5 * ranked["error_int8"] > 0
    assert sensitivity.ranking(model, config(mode), ctx) == ranked  # cached: computed once per model and family


@pytest.mark.parametrize("mode", REALIZED_BY)
def test_int8_layers_round_trips_through_every_runtime_that_realizes_it(mode, tmp_path):
    available(mode)
    whole, _ = built(mode, tmp_path / "all")
    mixed, ctx = built(mode, tmp_path / "mixed", int8_layers=0.75)  # 3 layers: 2 stay int8, the fragile one float
    assert ctx.int8["float_layers"] == [FRAGILE] and ctx.report["float_layers"] == FRAGILE
    assert f"int8_layers=0.75: 1 of 3 layers kept in float ({FRAGILE})" in ctx.notes
    assert fidelity(whole) < 0.95 < 0.99 < fidelity(mixed)


def test_auto_keeps_whole_int8_where_it_holds_and_reverts_only_what_breaks(tmp_path):
    auto, ctx = built("eager", tmp_path / "a", int8_layers="auto")
    assert ctx.int8["float_layers"] == [FRAGILE] and fidelity(auto) > 0.99
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()

    tolerant = autoopt.Pipeline("tolerant", mlp, make_inputs, calibration_data=calibration_data)
    cfg = config("eager", int8_layers="auto")
    (tmp_path / "b").mkdir()
    _, _, ctx, _ = build_candidate(tolerant, cfg, "cpu", 1, str(tmp_path / "b"), make_inputs(4), accuracy_floor=0.9)
    assert ctx.int8["float_layers"] == [] and "int8_ranking" not in ctx.report  # no ranking was needed


def test_units_are_grouped_by_block_past_the_limit():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.out = (nn.Linear(4, 4) for _ in range(4))

    model = nn.Module()
    model.encoder = nn.ModuleList([Block() for _ in range(6)])
    model.head = nn.Linear(4, 2)
    assert len(sensitivity.quantizable_units(model)) == 7  # 25 layers: 6 blocks and the head
    assert sensitivity.quantizable_units(model)[:2] == ["encoder.0", "encoder.1"]
    assert sensitivity.quantizable_units(Fragile()) == ["first", "mid", "last"]


def test_int8_layers_is_a_conflict_where_no_quantizer_realizes_it():
    reason = knobs.conflict(config("inductor", int8_layers=0.75), "cpu")
    assert reason.startswith("int8_layers on inductor: the layer-wise int8 choice is realized by torch FX")
    assert knobs.conflict(config("inductor"), "cpu") is None  # the baseline (all) needs nothing
    assert knobs.canonical(config("eager", quantization="none", int8_layers=0.5))["int8_layers"] == "all"


def test_openvino_runs_int8_with_the_rest_in_bf16():
    available("openvino")
    from autoopt.runtimes import openvino

    if not openvino.cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 units")
    assert knobs.conflict(config("openvino", precision="bf16", int8_layers="auto"), "cpu") is None
    assert "starts from the fp32 model" in knobs.conflict(config("eager", precision="bf16"), "cpu")


def test_the_report_shows_each_ranking_most_sensitive_first(tmp_path):
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=make_inputs(2),
                                pipeline=PIPELINE, calibration=calibration_data)
    ranked = sensitivity.ranking(Fragile(), config("eager"), ctx)
    trial = TrialRecord(1, config("eager", int8_layers=0.75), TrialState.COMPLETE,
                        metrics={"int8_ranking": ranked["key"], "float_layers": FRAGILE})
    [(text, (table, plot))] = sensitivity_files([trial, trial], tmp_path)
    assert table.read_text().splitlines()[:2] == ["layer,sensitivity", f"{FRAGILE},{ranked['sensitivity'][FRAGILE]:.6g}"]
    assert plot.exists() and "## Int8 layer sensitivity (eager)" in text and f"| {FRAGILE} |" in text


@pytest.mark.slow
def test_a_mixed_int8_winner_ships_as_measured(tmp_path, write_file):
    available("openvino")
    space = write_file("space.yaml", "batch_size: [1]\nquantization: [static_int8]\nint8_layers: [auto]\n"
                                     "compile_mode: [openvino]\n")
    store = str(tmp_path / "store")
    # the grid's 8 combinations (the baselines with them) in 9 trials (the reference is one of them): the mixed one is
    # always measured, and may come up again as a reuse
    result = autoopt.search(FRAGILE_FILE, space=space, trials=9, sampler="grid", seed=0, max_accuracy_drop="1%",
                            tracking_uri=store, **FAST)
    [mixed] = [t for t in result.trials if t.config["int8_layers"] == "auto" and t.config["quantization"] == "static_int8"
               and t.config["compile_mode"] == "openvino" and t.reused_from is None]
    assert mixed.metrics["float_layers"] == FRAGILE and mixed.feasible
    autoopt.export(result.study_name, trial=mixed.number, format="openvino", out=str(tmp_path / "bundle"),
                              tracking_uri=store)
    manifest = json.loads((tmp_path / "bundle" / "autoopt.json").read_text())
    assert manifest["float_layers"] == [FRAGILE] and manifest["verification"]["min_cosine"] > 0.99
    predict = autoopt.load(tmp_path / "bundle")
    assert fidelity(predict) > 0.99


# The attention recipe, on graphs the real converters make of a transformers (HF) BERT model.

def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    return Encoder().eval(), (ids, torch.ones_like(ids))


def test_openvino_finds_attention_in_the_fused_graph_of_a_transformers_model():
    available("openvino")
    import openvino

    model, example = tiny_bert()
    ops = {op.get_type_name() for op in openvino.convert_model(model, example_input=example).get_ops()}
    assert "ScaledDotProductAttention" in ops and "Softmax" not in ops  # why MatMul + Softmax alone missed it
    assert has_attention(ops)


def test_the_onnx_export_of_a_transformers_model_has_attention_and_a_cnn_has_none(tmp_path):
    import onnx

    from autoopt.runtimes.onnxruntime import export_onnx

    model, example = tiny_bert()
    export_onnx(model, example, str(tmp_path / "bert.onnx"))
    assert has_attention(n.op_type for n in onnx.load(str(tmp_path / "bert.onnx")).graph.node)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    export_onnx(cnn, (torch.randn(2, 1, 8, 8),), str(tmp_path / "cnn.onnx"))
    assert not has_attention(n.op_type for n in onnx.load(str(tmp_path / "cnn.onnx")).graph.node)
