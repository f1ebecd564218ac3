"""Saved programs as the model: FILE.pt2 (torch.export) and FILE.pt (TorchScript). The knobs' and runtimes'
declarations of what they can do with a program (Knob.programs, runtime PROGRAMS) are checked on real exported
and scripted models, both ways; then the space fitted to a program, the errors, and a search that exports."""

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from autoopt import knobs, runtimes
from autoopt.study import programs
from autoopt.cli import app
from autoopt.errors import Unsupported
from autoopt.pipeline import load_pipeline
from autoopt.sources import pipeline_file
from autoopt.study.space import fit_pipeline, load_space
from test_knobs import values_of
from test_runtimes import RUNTIME_MODES, available

runner = CliRunner()
FORMS = ("exported", "scripted")


class Net(torch.nn.Module):
    """Conv and Linear layers (to prune, to quantize), two outputs with the batch axis first."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(8 * 6 * 6, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1)))
        return self.fc2(h), h


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{form: the program file}, saved as a user would: torch.export.save with a dynamic batch, torch.jit.save."""
    folder = tmp_path_factory.mktemp("programs")
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 3, 6, 6)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), folder / "net.pt2")
    torch.jit.save(torch.jit.trace(net, x), folder / "net.pt")
    return {"exported": folder / "net.pt2", "scripted": folder / "net.pt"}


@pytest.fixture(scope="module")
def pipes(saved):
    """{form: the pipeline autoopt writes for the program}."""
    return {form: load_pipeline(pipeline_file(str(path), {"input_shape": "3x6x6"})) for form, path in saved.items()}


def ctx(pipe, tmp_path):
    return runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=pipe.make_inputs(2),
                                 batch_inputs=pipe.make_inputs(4), make_inputs=pipe.make_inputs, pipeline=pipe,
                                 calibration=lambda: [pipe.make_inputs(16) for _ in range(4)])


MODEL_KNOBS = [name for name, knob in knobs.REGISTRY.items() if knob.apply is not None and "infer" in knob.tasks]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", MODEL_KNOBS)
def test_a_knob_changes_the_programs_it_declares_and_only_those(name, form, pipes, tmp_path):
    knob, pipe = knobs.REGISTRY[name], pipes[form]
    if reason := knob.requires(pipe):
        pytest.skip(f"{name} cannot change this pipeline at all: {reason}")
    x = pipe.make_inputs(4)
    expected = pipe.build_model()(*x)[0]
    for value in [v for v in values_of(knob) if v != knob.baseline][:2]:
        config = {**knobs.reference_config(), **knob.relevant_in, name: value}
        try:
            model = knobs.apply_model_knobs(pipe.build_model(), config, ctx(pipe, tmp_path))
            changed = not torch.equal(model(*(t.to(next(model.parameters()).dtype) if t.is_floating_point() else t
                                                for t in x))[0].float(), expected)
        except Exception:  # noqa: BLE001 - Unsupported, or a failure of its own: either way it cannot change it
            changed = False
        assert changed == (form in knob.programs), (name, value, form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", RUNTIME_MODES)
def test_a_runtime_builds_the_programs_it_declares_and_only_those(mode, form, pipes, tmp_path):
    available(mode)
    runtime, pipe = runtimes.get(mode), pipes[form]
    config = {**knobs.reference_config(), "compile_mode": mode, "batch_size": 4}
    build_ctx = ctx(pipe, tmp_path)
    x = pipe.make_inputs(5)
    if form not in runtime.PROGRAMS:
        with pytest.raises((Unsupported, RuntimeError)):  # torch.export (inductor, ONNX) cannot capture TorchScript
            runtime.prepare(pipe.build_model(), config, build_ctx)
        return
    built = runtime.load(runtime.prepare(pipe.build_model(), config, build_ctx), config, build_ctx)
    got, expected = built.predict(*x), pipe.build_model()(*x)
    assert len(got) == 2 and all(torch.allclose(g, e, atol=1e-4) for g, e in zip(got, expected))


def test_the_space_is_fitted_to_a_program_with_one_warning_line(pipes, caplog):
    caplog.set_level(logging.WARNING, "autoopt")
    space = load_space(None, "cpu", "infer")
    fit_pipeline(space, pipes["scripted"], explicit=False)  # as a search does: trim_padding goes (no padding mask)
    programs.fit_space(space, pipes["scripted"], "cpu", "infer")
    assert space.domains["compile_mode"].choices == ("eager", "torchscript", "openvino")
    assert space.domains["pruning_amount"].choices == (0.0,) and space.domains["distill_steps"].choices == (0,)
    assert space.domains["quantization"].choices == ("none", "static_int8")  # openvino quantizes the program's graph
    assert space.domains["precision"].choices == ("fp32", "bf16")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "net is a TorchScript program, not an nn.Module" in warnings[0]
    assert ("dropped from the space: compile_mode=inductor/onnxruntime (cannot build it); pruning_amount=0.25/0.5, "
            "distill_steps=200/1000, quantization=dynamic_int8 (rewrite nn.Module layers); pruning_method=structured/depth, "
            "graph_fusion=none/transformer (nothing left to qualify).") in warnings[0]
    # what the space cannot rule out alone is pruned before any work, with the runtimes that can
    config = {**space.reference_config(), "quantization": "static_int8", "compile_mode": "torchscript"}
    assert space.conflict(config, "cpu") == ("quantization=static_int8 on torchscript rewrites nn.Module layers, "
                                             "which a TorchScript program does not have; openvino realize it on the "
                                             "program's graph")
    with pytest.raises(Unsupported, match="on torchscript rewrites nn.Module layers"):
        programs.check_build(pipes["scripted"], config)
    ranged = load_space({"pruning_amount": {"low": 0.0, "high": 0.5}, "compile_mode": ["eager"]}, "cpu", "infer")
    programs.fit_space(ranged, pipes["exported"], "cpu", "infer")  # a range keeps its baseline only
    assert ranged.domains["pruning_amount"].choices == (0.0,) and ranged.domains["pruning_amount"].low is None
    exported = load_space(None, "cpu", "infer")
    programs.fit_space(exported, pipes["exported"], "cpu", "infer")
    assert "onnxruntime" in exported.domains["compile_mode"].choices
    assert exported.domains["quantization"].choices == ("none", "dynamic_int8", "static_int8")


def search(*args):
    return runner.invoke(app, ["search", *args, "--min-time", "0.05s", "--no-warm-start", "--remeasure-top", "0"])


@pytest.mark.slow
@pytest.mark.parametrize("form, fmt", [("exported", "onnx"), ("scripted", "torchscript")])
def test_a_program_runs_a_short_search_and_exports_a_verified_bundle(form, fmt, saved, tmp_path, caplog):
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [1, 8]\ncompile_mode: [eager, torchscript, onnxruntime]\n")
    shape = [] if form == "exported" else ["--input-shape", "3x6x6"]  # a .pt2 carries its example inputs
    done = search(str(saved[form]), *shape, "--trials", "3", "--space", str(space), "--export", fmt,
                  "--out", str(tmp_path / "b"), "--tracking-uri", str(tmp_path / "store"), "--seed", "0")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "b" / "autoopt.json").read_text())
    assert manifest["format"] == fmt and manifest["verification"]["accuracy"] > 0.999
    if form == "scripted":
        assert any("dropped from the space: compile_mode=onnxruntime (cannot build it)." in r.getMessage()
                   for r in caplog.records)


@pytest.mark.parametrize("args, message", [
    (["{net.pt2}", "--input-shape", "3x7x7"], "net.pt2 does not run on inputs 3x7x7 (float32) at batch 1: "
                                             "AssertionError: Guard failed: x.size()[2] == 6. The program was exported "
                                             "with 3x6x6 (float32): leave --input-shape out, or give that."),
    (["{net.pt}", "--input-shape", "3x6"], "net.pt does not run on inputs 3x6 (float32) at batch 1: RuntimeError:"),
    (["{net.pt}"], "net.pt does not record its input shapes (a TorchScript module). Give --input-shape as one "
                   "sample's sizes without the batch axis, e.g. 3x224x224"),
    (["{net.pt}", "--input-shape", "3xx6"], "--input-shape 3xx6: '3xx6' is not a shape."),
    (["{net.pt}", "--input-shape", "3x6x6", "--input-dtype", "float31"], "'float31' is not a torch dtype"),
    (["{net.pt}", "--input-shape", "3x6x6", "--input-dtype", "float32,int64"], "names 2 dtypes for 1 inputs"),
    (["{net.pt}", "--input-shape", "3x6x6", "--texts", "t.txt"], "--texts belongs to a model brought as hf:PATH; "),
    (["digits_cnn", "--input-shape", "3x6x6"], "--input-shape belongs to a model brought as FILE.pt2 or FILE.pt; "
                                               "the pipeline digits_cnn makes its own inputs."),
    (["{net.pt}", "--input-shape", "3x6x6", "--task", "train"], "net is a TorchScript program: autoopt searches its "
                                                                "inference (--task infer)."),
    (["{static.pt2}"], "static.pt2 was exported with a fixed batch of 2 (axis 0 of input 'x'), and autoopt searches "
                       "batch sizes. Export it with a dynamic batch axis"),
    (["{weights.pt}", "--input-shape", "3x6x6"], "weights.pt: cannot load it as a TorchScript module (torch.jit.save; "
                                                 "torch.save's weights or a pickled nn.Module are not TorchScript"),
    (["{missing.pt2}"], "missing.pt2: no such file. Expected a torch.export program (.pt2, written by "
                        "torch.export.save) or a TorchScript module"),
])
def test_a_wrong_program_or_input_shape_is_one_error_line(args, message, saved, tmp_path):
    folder = saved["exported"].parent
    if not (folder / "static.pt2").exists():
        torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 3, 6, 6),)), folder / "static.pt2")
        torch.save(Net().state_dict(), folder / "weights.pt")
    done = search(*[str(folder / a[1:-1]) if a.startswith("{") else a for a in args], "--dry-run")
    lines = done.output.strip().splitlines()
    assert done.exit_code == 2 and lines[-1].startswith("error: ") and len([x for x in lines if "error" in x]) == 1
    assert message in " ".join(done.output.split()), done.output


def test_a_pipeline_model_form_is_one_of_three():
    import autoopt

    with pytest.raises(autoopt.PipelineError, match=r"Pipeline 'model_form' must be one of \['module', 'exported', "
                                                    r"'scripted'\]. Got 'onnx'."):
        autoopt.Pipeline("x", lambda: None, lambda b: (), model_form="onnx")
