"""What is specific to inductor_aot and the aoti format: a clear reason where torch.export fails, a fixed
batch where the batch cannot be dynamic, and every winner shipping in some format. (The conformance
suite in test_runtimes.py runs the rest: predict vs eager, dict outputs, the bundle through the
fresh-process verifier, autoopt.load and MLflow.)"""

import json

import optuna
import pytest
import torch

import autoopt
from autoopt import knobs, runtimes
from autoopt.bundle.export import default_format
from autoopt.errors import Unsupported
from conftest import FAST, TINY_MLP

aoti = runtimes.get("inductor_aot")
pytestmark = pytest.mark.skipif(aoti.unavailable("inductor_aot", "cpu") is not None, reason="no C++ compiler")


def prepare(model, tmp_path, batch=4):
    config = {**knobs.reference_config(), "compile_mode": "inductor_aot", "batch_size": batch}
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=(torch.randn(2, 3),),
                                batch_inputs=(torch.randn(batch, 3),))
    return aoti.prepare(model.eval(), config, ctx), config, ctx


class DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x * 3  # a branch on the values: torch.export cannot capture it


class FourRows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("rows", torch.arange(4.0).unsqueeze(1))  # broadcasting ties the batch to 4

    def forward(self, x):
        return x + self.rows


def test_a_model_torch_export_cannot_capture_is_pruned_with_the_reason(tmp_path):
    with pytest.raises(Unsupported, match="inductor_aot: torch.export cannot capture this model: Guard") as caught:
        prepare(DataDependent(), tmp_path)
    assert caught.value.scope == {"compile_mode": "inductor_aot", "quantization": "none"}
    # an inductor trial ships as aoti (which carries it): its build prunes it too, before compiling (build_candidate
    # checks the carrying format first), so no winner is unshippable
    config = {**knobs.reference_config(), "compile_mode": "inductor", "batch_size": 4}
    ctx = runtimes.BuildContext(device="cpu", threads=1, workdir=str(tmp_path), example_inputs=(torch.randn(2, 3),),
                                batch_inputs=(torch.randn(4, 3),))
    with pytest.raises(Unsupported, match="inductor: torch.export cannot capture this model"):
        runtimes.check_carried(DataDependent().eval(), config, ctx)


@pytest.mark.slow
def test_a_batch_that_cannot_be_dynamic_is_compiled_for_the_trial_s_and_recorded(tmp_path):
    prepared, config, ctx = prepare(FourRows(), tmp_path)
    assert prepared.state["fixed_batch"] == 4 and prepared.artifact.endswith("model.pt2")
    x = torch.randn(4, 3)
    torch.testing.assert_close(aoti.load(prepared, config, ctx).predict(x), x + torch.arange(4.0).unsqueeze(1))
    settings = aoti.EXPORT.settings(config, prepared)
    assert settings["fixed_batch"] == 4 and settings["dtype"] == "float32" and settings["cpu_isa"]


def study_of(*modes, export=None):
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("autoopt", {"export": export})
    for i, mode in enumerate(modes):  # the last one is the fastest
        study.enqueue_trial({"compile_mode": mode})
        trial = study.ask({"compile_mode": optuna.distributions.CategoricalDistribution(list(runtimes.RUNTIMES))})
        trial.set_user_attr("metrics", {"throughput": 10.0 * (i + 1)})
        study.tell(trial, 10.0 * (i + 1))
    return study


def test_without_a_format_the_winner_ships_whatever_its_runtime():
    assert default_format(study_of("eager", "inductor"), None) == "aoti"  # AOTInductor carries inductor
    assert default_format(study_of("inductor", "eager"), None) == "torchscript"  # TorchScript carries eager
    assert default_format(study_of("eager", "openvino"), None) == "openvino"
    assert default_format(study_of("eager", "onnxruntime"), 0) == "torchscript"  # the trial asked for
    assert default_format(study_of("eager", "openvino", export="onnx"), None) == "onnx"  # the study's --export
    assert runtimes.format_for("inductor_aot") == "aoti" and runtimes.FORMATS["aoti"] == "inductor_aot"


@pytest.mark.slow
def test_an_inductor_winner_exports_as_an_aoti_package_that_verifies(tmp_path, write_file):
    space = write_file("space.yaml", "compile_mode: [inductor]\nbatch_size: [4]\n")
    store = str(tmp_path / "store")
    result = autoopt.search(TINY_MLP, space=space, trials=2, seed=0, max_accuracy_drop="100%", tracking_uri=store,
                            warm_start=False, **FAST)
    (inductor,) = [t for t in result.trials if t.config["compile_mode"] == "inductor"]
    exported = autoopt.export(result.study_name, trial=inductor.number, out=str(tmp_path / "bundle"), tracking_uri=store)
    manifest = json.loads((tmp_path / "bundle" / "autoopt.json").read_text())
    assert manifest["format"] == "aoti" and (tmp_path / "bundle" / "model.pt2").is_file()
    assert manifest["measured_as"] == "inductor" and manifest["config"]["compile_mode"] == "inductor_aot"
    assert manifest["verification"]["batches"] == [3, 4] and manifest["runtime"]["fixed_batch"] is None  # dynamic
    assert exported.manifest["verification"]["min_cosine"] > 0.9999
    predict = autoopt.load(tmp_path / "bundle")
    x = torch.randn(5, 16)
    torch.testing.assert_close(predict(x), autoopt.load_pipeline(TINY_MLP).build_model()(x), rtol=1e-4, atol=1e-5)
