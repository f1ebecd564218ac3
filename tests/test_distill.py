"""Depth pruning and recovery by distillation (autoopt.distill, the distill_steps knob)."""

import pytest
import torch
from torch import nn

import autoopt
from autoopt import distill, knobs, runtimes
from autoopt.trial.build import build_candidate
from autoopt.errors import Unsupported
from conftest import FAST, TINY_MLP


class Encoder(nn.Module):
    """Four repeated encoder blocks and a dict output, like the bundled text transformer."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        hidden = self.encoder(x)
        return {"logits": self.head(hidden.mean(1)), "hidden": hidden}


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def seeded(cls):
    def build():
        torch.manual_seed(0)
        return cls().eval()
    return build


def inputs_of(*shape):
    def make_inputs(b):
        return (torch.randn(b, *shape),)
    return make_inputs


def distill_data_of(*shape, batches=24):
    def data():
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(32, *shape, generator=g),) for _ in range(batches)]
    return data


def ctx_for(pipe, tmp_path, batch=4):
    return runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=pipe.make_inputs(2),
                                 batch_inputs=pipe.make_inputs(batch), pipeline=pipe)


def config(**overrides):
    return {**knobs.reference_config(), **overrides}


def test_depth_pruning_drops_every_other_block_keeps_their_weights_and_the_output_structure(tmp_path):
    pipe = autoopt.Pipeline("enc", seeded(Encoder), inputs_of(5, 16))
    original = pipe.build_model()
    model = knobs.apply_model_knobs(pipe.build_model(), config(pruning_amount=0.5, pruning_method="depth"),
                                    ctx_for(pipe, tmp_path))
    assert len(model.encoder.layers) == 2 and model.encoder.num_layers == 2
    for kept, source in zip(model.encoder.layers, (original.encoder.layers[0], original.encoder.layers[2])):
        torch.testing.assert_close(kept.linear1.weight, source.linear1.weight)
    x = pipe.make_inputs(3)
    out, expected = model(*x), original(*x)
    assert set(out) == {"logits", "hidden"} and out["hidden"].shape == expected["hidden"].shape


def test_depth_pruning_says_why_it_cannot(tmp_path):
    pipe = autoopt.Pipeline("wide", seeded(Wide), inputs_of(8))
    with pytest.raises(Unsupported, match="needs repeated blocks") as info:
        knobs.apply_model_knobs(pipe.build_model(), config(pruning_amount=0.5, pruning_method="depth"),
                                ctx_for(pipe, tmp_path))
    assert info.value.scope == {"pruning_method": "depth"}

    class Funnel(nn.Module):  # each block halves the width: none can be dropped
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4), nn.Linear(4, 2))

        def forward(self, x):
            return self.blocks(x)

    funnel = autoopt.Pipeline("funnel", seeded(Funnel), inputs_of(16))
    with pytest.raises(Unsupported, match="keep their input's shape"):
        knobs.apply_model_knobs(funnel.build_model(), config(pruning_amount=0.5, pruning_method="depth"),
                                ctx_for(funnel, tmp_path))


def output_error(model, teacher, x) -> float:
    with torch.no_grad():
        return float((model(x) - teacher(x)).pow(2).mean())


def test_distillation_lowers_the_pruned_model_s_output_error(tmp_path):
    pipe = autoopt.Pipeline("wide", seeded(Wide), inputs_of(8), distill_data=distill_data_of(8))
    teacher, x = pipe.build_model(), torch.randn(256, 8)
    pruned = knobs.apply_model_knobs(pipe.build_model(), config(pruning_amount=0.5, pruning_method="structured"),
                                     ctx_for(pipe, tmp_path))
    before = output_error(pruned, teacher, x)
    student, report, note = distill.distilled(pruned, pipe, 150, pipe.make_inputs(2), str(tmp_path))
    assert output_error(student, teacher, x) < 0.5 * before
    assert report["distill_s"] > 0 and report["distill_samples"] == 24 * 32 and note is None
    assert not student.training


def test_the_distilled_student_is_cached_across_batch_sizes_threads_and_runtimes(tmp_path):
    pipe = autoopt.Pipeline("wide", seeded(Wide), inputs_of(8), distill_data=distill_data_of(8))
    pruning = {"pruning_amount": 0.5, "pruning_method": "structured", "distill_steps": 40}
    outputs, reports, x = [], [], pipe.make_inputs(8)
    for i, (batch, threads, mode) in enumerate([(4, 1, "eager"), (16, 2, "eager"), (8, 1, "onnxruntime")]):
        work = tmp_path / str(i)
        work.mkdir()
        runtime, prepared, ctx, _ = build_candidate(pipe, config(batch_size=batch, compile_mode=mode, **pruning), "cpu",
                                                    threads, str(work), pipe.make_inputs(batch))
        outputs.append(runtime.load(prepared, config(), ctx).predict(*x))
        reports.append(ctx.report)
    assert reports[0]["distill_s"] > 0 and reports[1]["distill_s"] == reports[2]["distill_s"] == 0.0  # trained once
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-4, atol=1e-5)


def test_distill_steps_matters_only_when_channels_or_blocks_were_pruned():
    ref = knobs.reference_config()
    assert knobs.canonical({**ref, "distill_steps": 200}) == ref
    zeroed = {**ref, "pruning_amount": 0.5, "pruning_method": "l1_unstructured", "distill_steps": 200}
    assert knobs.canonical(zeroed)["distill_steps"] == 0  # training would fill the zeros in again
    pruned = {**ref, "pruning_amount": 0.5, "pruning_method": "depth", "distill_steps": 200}
    assert knobs.canonical(pruned) == pruned
    # a retrained model is a model of its own: an export is compared with it, not with the original
    assert knobs.fidelity_base(pruned) == {"pruning_amount": 0.5, "pruning_method": "depth", "distill_steps": 200}
    assert knobs.export_tolerance(pruned) == knobs.EXACT
    assert knobs.export_tolerance({**pruned, "quantization": "static_int8"}) == (0.95, float("inf"))
    assert knobs.fidelity_base({**pruned, "distill_steps": 0}) == {}
    assert knobs.export_tolerance({**pruned, "distill_steps": 0}) == (0.95, float("inf"))


def test_labels_add_the_task_loss_and_few_samples_are_noted(tmp_path):
    calls = []

    def make_batch(b):
        x = torch.randn(b, 8)
        return x, (x.sum(1) > 0).long()

    def loss_fn(outputs, batch):
        calls.append(1)
        return nn.functional.cross_entropy(outputs, batch[1])

    labeled = autoopt.Pipeline("wide", seeded(Wide), inputs_of(8), make_batch=make_batch, loss_fn=loss_fn)
    data = distill.distill_data(labeled)
    assert data.labeled and data.source == "make_batch()" and data.note() is None
    distill.train(labeled.build_model(), labeled.build_model(), data, 5, 1, labeled.loss_fn)
    assert len(calls) == 5

    fixed = autoopt.Pipeline("fixed", seeded(Wide), lambda b: (torch.ones(b, 8),))  # make_inputs: one sample
    note = distill.distill_data(fixed).note()
    assert note.startswith("distillation saw only 1 distinct samples (from make_inputs()); fewer than 512 are too few")


def test_a_distilled_trial_exports_verified_against_the_student_it_is(tmp_path):
    (tmp_path / "space.yaml").write_text("pruning_amount: [0.5]\npruning_method: [structured]\ndistill_steps: [30]\n"
                                         "compile_mode: [onnxruntime]\n")
    store = str(tmp_path / "store")
    result = autoopt.search(TINY_MLP, space=str(tmp_path / "space.yaml"), trials=2, seed=3, max_accuracy_drop=1.0,
                            warm_start=False, tracking_uri=store, **FAST)
    trial = result.trials[1]  # seed 3 samples it: the sampler is seeded
    assert (trial.config["pruning_method"], trial.config["distill_steps"], trial.config["compile_mode"]) == \
        ("structured", 30, "onnxruntime")
    assert trial.metrics["distill_s"] > 0 and trial.metrics["build_s"] >= trial.metrics["distill_s"]
    exported = autoopt.export(result.study_name, trial=1, format="onnx", out=str(tmp_path / "bundle"), tracking_uri=store)
    verification = exported.manifest["verification"]
    # exact against the student: the original (half its hidden units gone) is nowhere near that close
    assert verification["compared_with"] == ("the retrained model (pruning_amount=0.5 pruning_method=structured "
                                             "distill_steps=30)")
    assert verification["min_cosine"] > 0.9999
    original, x = autoopt.load_pipeline(TINY_MLP).build_model(), torch.randn(64, 16)
    out = autoopt.load(tmp_path / "bundle")(x)
    assert float(torch.nn.functional.cosine_similarity(out.reshape(1, -1), original(x).reshape(1, -1))) < 0.9999
