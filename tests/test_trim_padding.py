"""trim_padding: the padding mask found (or refused) in a pipeline's batches, the trimmed model's outputs equal to
the padded model's on every runtime that realizes it, and a shipped bundle that trims by itself."""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import autoopt
from autoopt.bundle import export as bundle
from autoopt import knobs, padding, runtimes
from autoopt.trial.build import build_candidate, calibration_batches
from autoopt.errors import PipelineError
from autoopt.pipeline import load_pipeline
from autoopt.study.space import fit_pipeline, load_space
from conftest import FAST, TESTS, TINY_MLP

MASKED_FILE = str(TESTS / "pipelines" / "tiny_masked.py")
MASKED = load_pipeline(MASKED_FILE)
RUNTIMES = ("eager", "torchscript", "onnxruntime", "openvino")


def variant(**fields):
    """The tiny masked pipeline with some fields replaced (a new object: padding.find caches per pipeline)."""
    return dataclasses.replace(MASKED, **fields)


def available(mode: str) -> None:
    if reason := runtimes.get(mode).unavailable(mode, "cpu"):
        pytest.skip(reason)


def built(pipe, mode: str, value: str, tmp_path):
    config = {**knobs.reference_config(), "compile_mode": mode, "trim_padding": value, "batch_size": 4, "threads": 1}
    tmp_path.mkdir(parents=True, exist_ok=True)
    runtime, prepared, ctx, _ = build_candidate(pipe, config, "cpu", 1, str(tmp_path), pipe.make_inputs(4))
    return runtime.load(prepared, config, ctx), prepared, ctx, config


# Finding the mask

def test_a_right_padding_mask_is_detected_with_the_inputs_it_pads():
    found = padding.find(variant())
    assert (found.mask, found.padded, found.names, found.how) == (1, (0, 1), ("input_ids", "attention_mask"), "detected")
    assert 0.4 < found.padding_share < 0.9 and found.refused is None
    assert found.describe().startswith("padding mask attention_mask (detected")


def test_left_padding_and_an_input_of_zeros_are_not_a_mask():
    def left_padded(batch_size):
        ids, mask = MASKED.make_inputs(batch_size)
        return ids.flip(1), mask.flip(1)

    assert padding.find(variant(make_inputs=left_padded, calibration_data=None)) is None

    def with_token_types(batch_size):  # all zeros: 0/1 values, zeros a suffix, but no row has a real position
        ids, mask = MASKED.make_inputs(batch_size)
        return ids, torch.zeros_like(ids), mask

    class Typed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MASKED.build_model()

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.inner(input_ids + token_type_ids, attention_mask)

    found = padding.find(variant(build_model=lambda: Typed().eval(), make_inputs=with_token_types, calibration_data=None))
    assert (found.mask, found.padded) == (2, (0, 1, 2))  # token_type_ids is padded with the rest, not the mask


def test_a_declared_mask_whose_zeros_are_not_a_suffix_is_refused():
    def left_padded(batch_size):
        ids, mask = MASKED.make_inputs(batch_size)
        return ids.flip(1), mask.flip(1)

    with pytest.raises(PipelineError) as info:
        padding.find(variant(make_inputs=left_padded, calibration_data=None, padding_mask="attention_mask"))
    message = str(info.value)
    assert "padding_mask 'attention_mask' must be a (batch, sequence) mask of 0/1 whose zeros end each row" in message
    assert "has a zero before a one (left padding?)" in message and "padding_side='right'" in message


def test_a_declared_mask_by_name_or_position_and_padding_mask_false():
    assert padding.find(variant(padding_mask="attention_mask")).how == "declared"
    assert padding.find(variant(padding_mask=1, padded_inputs=["input_ids"])).padded == (0, 1)
    assert padding.find(variant(padding_mask=False)) is None
    with pytest.raises(PipelineError, match=r"padding_mask 'mask' names no input of the model. Expected one of "
                                            r"\['input_ids', 'attention_mask'\]"):
        padding.find(variant(padding_mask="mask"))


@pytest.mark.parametrize("fields, words", [
    ({"padding_mask": True}, "'padding_mask' must name the mask input"),
    ({"padded_inputs": ["input_ids"]}, "'padded_inputs' must be a list of input names or positions, given with padding_mask"),
    ({"padding_mask": "attention_mask", "padded_inputs": "input_ids"}, "'padded_inputs' must be a list"),
])
def test_bad_padding_fields_are_errors_naming_the_field(fields, words):
    with pytest.raises(PipelineError, match=words):
        autoopt.Pipeline("p", MASKED.build_model, MASKED.make_inputs, **fields)


def test_an_output_per_position_refuses_trimming_and_the_space_drops_it(caplog):
    class PerPosition(nn.Module):
        def forward(self, input_ids, attention_mask):
            return input_ids.float() * attention_mask

    pipe = variant(build_model=lambda: PerPosition().eval())
    reason = knobs.REGISTRY["trim_padding"].requires(pipe)
    assert reason.startswith("output 0 has the sequence axis (shape (2, 24) padded")
    space = load_space(None)
    with caplog.at_level(logging.INFO, "autoopt"):
        fit_pipeline(space, pipe, explicit=True)
    assert space.domains["trim_padding"].choices == ("off",)
    assert "trim_padding=on, bucketed dropped from" in caplog.text and "has the sequence axis" in caplog.text


def test_a_pipeline_without_a_mask_keeps_trim_padding_off(caplog):
    space = load_space(None)
    with caplog.at_level(logging.INFO, "autoopt"):
        fit_pipeline(space, load_pipeline(TINY_MLP), explicit=False)
    assert space.domains["trim_padding"].choices == ("off",)
    assert "the pipeline has no padding mask" in caplog.text and "padding_mask='attention_mask'" in caplog.text
    unchanged = load_space(None)
    fit_pipeline(unchanged, variant(), explicit=False)
    assert unchanged.domains["trim_padding"].choices == ("off", "on", "bucketed")


def test_warm_start_configurations_run_trimmed_where_the_pipeline_has_a_mask():
    masked, plain = load_space(None), load_space(None)
    fit_pipeline(masked, variant(), explicit=False)
    fit_pipeline(plain, load_pipeline(TINY_MLP), explicit=False)
    features = ("AVX512-VNNI", "BF16-FAST")
    seeds = masked.warm_start("cpu", features=features)
    assert {s["trim_padding"] for s in seeds if s["compile_mode"] != "inductor"} == {"on"}
    assert {s["trim_padding"] for s in seeds if s["compile_mode"] == "inductor"} <= {"off"}  # a conflict there
    assert [{**s, "trim_padding": "off"} for s in seeds] == plain.warm_start("cpu", features=features)


def test_torch_compile_is_a_conflict_and_the_calibration_is_cut_like_the_model():
    reason = knobs.conflict({**knobs.reference_config(), "compile_mode": "inductor", "trim_padding": "on"}, "cpu")
    assert "compile once per kept length" in reason
    reason = knobs.conflict({**knobs.reference_config(), "compile_mode": "inductor_aot", "trim_padding": "on"}, "cpu")
    assert "AOTInductor cannot compile attention over a data-dependent length" in reason
    pipe = variant()
    for value, bucket in (("on", 1), ("bucketed", padding.BUCKET)):
        for ids, mask in calibration_batches(pipe, {"trim_padding": value}):
            kept = max(int(mask.sum(1).max()), 2)
            assert ids.shape[1] == mask.shape[1] == -(-kept // bucket) * bucket
    assert all(ids.shape[1] == 24 for ids, _ in calibration_batches(pipe, {"trim_padding": "off"}))


# The trimmed model on every runtime

@pytest.mark.parametrize("mode", RUNTIMES)
def test_trimmed_outputs_equal_the_padded_ones_on_every_runtime(mode, tmp_path):
    available(mode)
    values = ("on", "bucketed")
    reference = MASKED.build_model()
    for value in values:
        built_model, _, ctx, _ = built(variant(), mode, value, tmp_path / value)
        assert ctx.report["timed_length"] < 24 and ctx.report["padding_share"] > 0.4
        # the batch it was built for, another batch size, and a longer padding (the sequence axis is dynamic)
        for batch_size, length in ((4, 24), (7, 24), (5, 40)):
            inputs = MASKED.make_inputs(batch_size, length)
            torch.testing.assert_close(built_model.predict(*inputs)["logits"], reference(*inputs)["logits"],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, overrides", [
    ("openvino", {"quantization": "static_int8"}), ("onnxruntime", {"quantization": "dynamic_int8"}),
    ("torchscript", {"quantization": "dynamic_int8"}), ("openvino", {"precision": "bf16"})])
def test_trimming_works_with_quantization_and_precision(mode, overrides, tmp_path):
    available(mode)
    if knobs.conflict({**knobs.reference_config(), "compile_mode": mode, **overrides}, "cpu"):
        pytest.skip("not on this CPU")  # bf16 on a CPU without bf16 units
    from autoopt.trial.accuracy import cosine_fidelity

    inputs = MASKED.make_inputs(16, 40)
    expected = MASKED.build_model()(*inputs)
    config = {**knobs.reference_config(), "compile_mode": mode, "trim_padding": "on", "batch_size": 4, **overrides}
    runtime, prepared, ctx, _ = build_candidate(variant(), config, "cpu", 1, str(tmp_path), MASKED.make_inputs(4))
    assert cosine_fidelity(runtime.load(prepared, config, ctx).predict(*inputs), expected) > 0.99


def tiny_bert_encoder():
    """A transformers BERT (built offline) with masked mean pooling: the graphs the real converters make."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    return Encoder().eval()


@pytest.mark.parametrize("mode", ["onnxruntime", "openvino"])
def test_a_transformers_bert_trims_exactly_on_the_graph_runtimes(mode, tmp_path):
    available(mode)
    encoder = tiny_bert_encoder()
    pipe = variant(build_model=lambda: encoder, calibration_data=None)
    built_model, *_ = built(pipe, mode, "on", tmp_path)
    inputs = MASKED.make_inputs(6, 32)
    torch.testing.assert_close(built_model.predict(*inputs), encoder(*inputs), rtol=1e-4, atol=1e-5)


# The shipped file trims by itself

class Unmasked(nn.Module):
    """Mean of the token embeddings over every position, padding included: its output changes when the padding
    is cut, so a bundle's output says whether its graph cut it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(50, 8, padding_idx=0)

    def forward(self, input_ids, attention_mask):
        return self.tokens(input_ids).mean(dim=1) + 0 * attention_mask[:, :1]


@pytest.mark.parametrize("fmt", sorted(runtimes.FORMATS))
def test_a_bundle_reloaded_in_a_fresh_process_trims_by_itself(fmt, tmp_path):
    mode = runtimes.FORMATS[fmt]
    available(mode)
    pipe = variant(build_model=lambda: Unmasked().eval(), calibration_data=None)
    assert "changes when the padding is cut" in knobs.REGISTRY["trim_padding"].requires(pipe)  # never searched
    # built as a trimming model all the same: its outputs show whether the shipped graph cut the padding
    config = {**knobs.reference_config(), "compile_mode": mode, "threads": 1}
    (tmp_path / "build").mkdir()
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path / "build"),
                                example_inputs=pipe.make_inputs(2), batch_inputs=pipe.make_inputs(4))
    prepared = runtimes.get(mode).prepare(padding.trimming(Unmasked().eval(), padding.find(MASKED)), config, ctx)
    manifest = bundle.model_manifest(fmt, config, prepared, pipe.build_model(), pipe.make_inputs(2))
    out = tmp_path / "bundle"
    out.mkdir()
    shutil.copyfile(prepared.artifact, out / manifest["model_file"])
    for companion in runtimes.export_format(fmt).companions:
        shutil.copyfile(os.path.join(os.path.dirname(prepared.artifact), companion), out / companion)
    manifest.write(out)
    work = tmp_path / "work"
    work.mkdir()
    ids, mask = pipe.make_inputs(3)
    np.savez(work / "inputs_3.npz", ids.numpy(), mask.numpy())
    bundle.run_verifier(work, out, runtimes.export_format(fmt), [3], 3, dict(os.environ))  # python -I, no autoopt
    got = np.load(work / "outputs_3.npz")[manifest["outputs"]["paths"][0]]
    kept = int(mask.sum(1).max())
    trimmed, padded = Unmasked()(ids[:, :kept], mask[:, :kept]), Unmasked()(ids, mask)
    np.testing.assert_allclose(got, trimmed.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, padded.detach().numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_search_ships_a_trimming_bundle_that_verifies(tmp_path, write_file):
    space = write_file("space.yaml", "batch_size: [1]\ntrim_padding: [off, on]\ncompile_mode: [onnxruntime]\n")
    store = str(tmp_path / "store")
    # the grid's 4 combinations (eager, the baseline, with them) in 4 trials
    result = autoopt.search(MASKED_FILE, space=space, trials=4, sampler="grid", seed=0, tracking_uri=store, **FAST)
    [trimmed] = [t for t in result.trials if t.config["trim_padding"] == "on" and t.reused_from is None
                 and t.config["compile_mode"] == "onnxruntime"]
    assert trimmed.metrics["timed_length"] < 24 and trimmed.metrics["padding_share"] > 0.4
    autoopt.export(result.study_name, trial=trimmed.number, format="onnx", out=str(tmp_path / "bundle"),
                   tracking_uri=store)
    manifest = json.loads((tmp_path / "bundle" / "autoopt.json").read_text())
    assert manifest["padding"]["mask"] == "attention_mask" and manifest["inputs"][0]["shape"] == ["batch", "sequence"]
    assert manifest["verification"]["min_cosine"] > 0.9999
    ids, mask = MASKED.make_inputs(5, 40)  # padded longer than the search's batches
    torch.testing.assert_close(autoopt.load(tmp_path / "bundle")(ids, mask)["logits"],
                               MASKED.build_model()(ids, mask)["logits"], rtol=1e-4, atol=1e-5)


def test_the_search_says_which_mask_it_found_in_its_first_lines(tmp_path, monkeypatch, caplog):
    from typer.testing import CliRunner

    from autoopt.cli import app

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, "autoopt"):
        result = CliRunner().invoke(app, ["search", MASKED_FILE, "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Inputs: padding mask attention_mask (detected; zeros a suffix of every row): trim_padding cuts input_ids, " \
           "attention_mask to the longest real row" in caplog.text
    assert "│ trim_padding │ [off, on, bucketed]" in " ".join(result.output.split())
