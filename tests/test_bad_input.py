"""Malformed input, as a new user types it: every case is one line on stderr that says what is wrong,
exit code 2, no traceback, and nothing left behind (no study, no MLflow run, no bundle)."""

import pytest

import autoopt
from autoopt.cli import main
from conftest import TINY_MLP

PIPELINE_HEAD = """import torch
from torch import nn
import autoopt

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()

def make_inputs(batch_size):
    return (torch.randn(batch_size, 16),)
"""
PIPELINES = {
    "syntax.py": "def broken(:\n",
    "no_pipeline.py": PIPELINE_HEAD,
    "not_a_pipeline.py": PIPELINE_HEAD + "PIPELINE = {'name': 'x'}\n",
    "build_raises.py": PIPELINE_HEAD + "def boom():\n    raise RuntimeError('weights.pt is missing')\n"
                       "PIPELINE = autoopt.Pipeline('p', boom, make_inputs)\n",
    "inputs_list.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, lambda b: [torch.randn(b, 16)])\n",
    "inputs_batch.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, lambda b: (torch.randn(3, 16),))\n",
    "evaluate_raises.py": PIPELINE_HEAD + "def evaluate(predict):\n    raise KeyError('labels')\n"
                          "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, evaluate=evaluate)\n",
    "evaluate_text.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, evaluate=lambda p: 'good')\n",
    "evaluate_nan.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, evaluate=lambda p: float('nan'))\n",
    "nan_model.py": PIPELINE_HEAD + "def nan_model():\n    m = build_model()\n    m[0].bias.data.fill_(float('nan'))\n"
                    "    return m\nPIPELINE = autoopt.Pipeline('p', nan_model, make_inputs)\n",
    "calibration_raises.py": PIPELINE_HEAD + "def calibration_data():\n    yield (torch.randn(8, 16),)\n"
                             "    raise FileNotFoundError('calib.npz')\n"
                             "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, calibration_data=calibration_data)\n",
    "calibration_arity.py": PIPELINE_HEAD + "def calibration_data():\n    yield (torch.randn(8, 16), torch.zeros(8))\n"
                            "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, calibration_data=calibration_data)\n",
    "distill_raises.py": PIPELINE_HEAD + "def distill_data():\n    raise OSError('unlabeled.parquet')\n"
                         "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, distill_data=distill_data)\n",
    "distill_empty.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, distill_data=lambda: [])\n",
    "reference_shape.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model, make_inputs, "
                          "build_reference=lambda: nn.Linear(16, 3))\n",
    "not_a_function.py": PIPELINE_HEAD + "PIPELINE = autoopt.Pipeline('p', build_model(), make_inputs)\n",
}
SPACES = {
    "empty.yaml": "",
    "not_yaml.yaml": "batch_size: [1, 8\n",
    "list.yaml": "- batch_size\n",
    "unknown.yaml": "batch_sise: [1, 8]\n",
    "bad_value.yaml": "precision: [fp32, fp8]\n",
    "train_knob.yaml": "checkpointing: [none, all]\n",
    "bad_range.yaml": "batch_size: {low: 8, high: 2}\n",
    "threads.yaml": "threads: [1, all]\n",
}
MANIFEST = ('{"format": "onnx", "model_file": "model.onnx", "config": {"batch_size": 4}, "inputs": [{"name": "x"}], '
            '"outputs": {}, "runtime": {}}')
FILES = {  # storage files and bundles a user may point at by mistake
    "not_journal.journal": "hello world\n",
    "foreign.journal": '{"a": 1}\n',
    "empty.journal": "",
    "notes/autoopt.json": "{not json",
    "odd/autoopt.json": '{"format": "onnx"}',
    "modelless/autoopt.json": MANIFEST,
}
S = ["search", TINY_MLP]
CASES = [
    (S + ["--trials", "0"], "Invalid value for '--trials'"),
    (S + ["--trials", "many"], "Invalid value for '--trials'"),
    (S + ["--jobs", "0"], "Invalid value for '--jobs'"),
    (S + ["--remeasure-top", "-1"], "Invalid value for '--remeasure-top'"),
    (S + ["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295. Got -1."),
    (S + ["--seed", "99999999999999999999"], "--seed must be a whole number from 0 to 4294967295."),
    (S + ["--target-latency", "fast"], "--target-latency is not a quantity: got 'fast'"),
    (S + ["--target-latency", "-5ms"], "--target-latency must not be negative"),
    (S + ["--target-memory", "12XB"], "--target-memory has unknown unit 'XB'"),
    (S + ["--max-accuracy-drop", "150%"], "--max-accuracy-drop must be between 0 and 1"),
    (S + ["--timeout", "0s"], "--timeout"),
    (S + ["--trial-timeout", "10parsecs"], "--trial-timeout has unknown unit"),
    (S + ["--min-time", "0"], "--min-time has no unit in '0'"),
    (S + ["--sampler", "bayes"], "--sampler must be one of [tpe, gp, random, grid]. Got 'bayes'."),
    (S + ["--task", "predict"], "--task must be one of [infer, train]. Got 'predict'."),
    (S + ["--device", "tpu"], "--device must be one of [auto, cpu, cuda]. Got 'tpu'."),
    (S + ["--export", "tflite"], "--export must be one of [aoti, onnx, openvino, torchscript]. Got 'tflite'."),
    (S + ["--export", "onnx", "--task", "train"], "--export ships an inference model"),
    (S + ["--register", "m"], "--register belongs to --export, which was not given."),
    (S + ["--out", "bundle"], "--out belongs to --export, which was not given."),
    (S + ["--study", "my study!"], "--study must be a name of letters, digits"),
    (S + ["--storage", "/proc/forbidden/journal"], "--storage /proc/forbidden/journal: cannot write a journal file there"),
    (S + ["--tracking-uri", "http://127.0.0.1:1"], "--tracking-uri http://127.0.0.1:1: no MLflow server answers there"),
    (S + ["--tracking-uri", "/proc/forbidden/ml"], "--tracking-uri /proc/forbidden/ml: cannot create the MLflow store"),
    (S + ["--bogus"], "No such option: --bogus"),
    (["nosuch"], "No such command 'nosuch'. See 'autoopt --help'."),
    (["ui", "--port", "99999"], "Invalid value for '--port'"),
    (["ui", "--port", "-1"], "Invalid value for '--port'"),
    (["export", "--study", "nope"], "No study named 'nope'"),
    (["export", "--study", "nope", "--format", "tflite"], "must be one of [aoti, onnx, openvino, torchscript]. Got 'tflite'."),
    (["trials", "--study", "nope"], "No study named 'nope'"),
    (["search", "{tmp}/missing.py"], "missing.py: pipeline file not found."),
    (S + ["--export", "onnx", "--out", "/proc/forbidden/out"], "--out /proc/forbidden/out: cannot write there"),
    (S + ["--export", "onnx", "--out", "{tmp}/syntax.py"], "--out {tmp}/syntax.py is a file."),
    (S + ["--export", "onnx", "--out", "{tmp}"], "--out {tmp} exists and is not empty."),
    (S + ["--storage", "{tmp}/not_journal.journal"], "not_journal.journal is not an Optuna journal"),
    (S + ["--storage", "{tmp}/foreign.journal"], "foreign.journal is not an Optuna journal"),
    (S + ["--storage", "{tmp}/notes"], "--storage {tmp}/notes is a directory."),
    (["export", "--storage", "{tmp}/empty.journal"], "No study in this storage yet (--storage {tmp}/empty.journal)"),
    (["trials", "--storage", "{tmp}/not_journal.journal"], "not_journal.journal is not an Optuna journal"),
    (["bench", "{tmp}/notes"], "notes/autoopt.json is not autoopt's manifest (not JSON: "),
    (["bench", "{tmp}/odd"], "odd/autoopt.json lacks model_file, config, inputs, outputs, runtime"),
    (["bench", "{tmp}/modelless"], "the bundle's model file {tmp}/modelless/model.onnx is missing"),
] + [(["search", "{tmp}/" + name], message) for name, message in [
    ("syntax.py", "syntax.py: failed to import: SyntaxError"),
    ("no_pipeline.py", "no_pipeline.py: defines no PIPELINE."),
    ("not_a_pipeline.py", "not_a_pipeline.py: PIPELINE must be an autoopt.Pipeline. Got dict."),
    ("build_raises.py", "build_raises.py: build_model raised RuntimeError: weights.pt is missing"),
    ("inputs_list.py", "make_inputs(2) must return a non-empty tuple of tensors"),
    ("inputs_batch.py", "first dimension is the batch size 2; input 0 has shape (3, 16)."),
    ("evaluate_raises.py", "evaluate(predict) of the reference raised KeyError: 'labels'"),
    ("evaluate_text.py", "evaluate(predict) must return a number (higher is better). Got 'good'."),
    ("evaluate_nan.py", "evaluate(predict) must return a number (higher is better). Got nan."),
    ("nan_model.py", "the model of build_model() returns NaN or infinite values on make_inputs(2)"),
    ("calibration_raises.py", "calibration_data() raised FileNotFoundError: calib.npz"),
    ("calibration_arity.py", "calibration_data() must yield tuples of 1 tensor(s), like make_inputs. Got (Tensor, Tensor)."),
    ("distill_raises.py", "distill_raises.py: distill_data() raised OSError: unlabeled.parquet"),
    ("distill_empty.py", "distill_data() yielded no batch. Yield some, or drop distill_data (make_batch, calibration_data or make_inputs "
                          "are used then)."),
    ("reference_shape.py", "build_reference()'s model must return what build_model()'s returns"),
    ("not_a_function.py", "Pipeline 'build_model' must be a function that returns the model, not the model (Sequential)."),
]] + [(S + ["--space", "{tmp}/" + name], message) for name, message in [
    ("empty.yaml", "empty.yaml has no knobs: a search would only measure the reference."),
    ("not_yaml.yaml", "not_yaml.yaml is not valid YAML"),
    ("list.yaml", "list.yaml must map knob names to domains. Got a list."),
    ("unknown.yaml", "The 'batch_sise' entry of {tmp}/unknown.yaml is not a knob."),
    ("bad_value.yaml", "must contain only values one of [fp32, bf16, fp16]. Got 'fp8'."),
    ("train_knob.yaml", "is a training knob"),
    ("bad_range.yaml", "must have low <= high. Got low=8, high=2."),
    ("threads.yaml", "must contain only values an integer in [1, 1024] or 'cores' or 'cores/N'. Got 'all'."),
    ("missing.yaml", "Search space file {tmp}/missing.yaml not found."),
]]


def _nothing_left(tmp_path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    assert not (tmp_path / "exports").exists() and not (tmp_path / "bundle").exists()
    journal = tmp_path / "mlruns" / "optuna.journal"
    if journal.exists():
        assert optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(journal)))) == []
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[1:] if a[0] == "search" else a)[-60:] for a, _ in CASES])
def test_malformed_input_is_one_line_exit_2_and_leaves_nothing(argv, message, tmp_path, monkeypatch, capsys):
    for name, text in {**PIPELINES, **SPACES, **FILES}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip() and not line.lstrip().startswith(("INFO", "WARNING"))]
    assert code == 2, out.err + out.out
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in out.err + out.out
    _nothing_left(tmp_path)


@pytest.mark.parametrize("call, message", [
    (lambda: autoopt.search(TINY_MLP, remeasure_top=-1), "remeasure_top must be a whole number of at least 0. Got -1."),
    (lambda: autoopt.search(TINY_MLP, min_time=0), "min_time must be a positive duration"),
    (lambda: autoopt.search(TINY_MLP, seed=2**40), "seed must be a whole number from 0 to 4294967295."),
    (lambda: autoopt.search(TINY_MLP, trials=0), "trials must be a whole number of at least 1. Got 0."),
    (lambda: autoopt.search(TINY_MLP, out="b"), "out belongs to export, which was not given. Add export='onnx'"),
    (lambda: autoopt.search(TINY_MLP, target_latency=-1), "target_latency must be a positive number of milliseconds."),
    (lambda: autoopt.search(TINY_MLP, trails=3), "trails is not a search option."),
    (lambda: autoopt.load("no/such/bundle"), "autoopt.load('no/such/bundle'): the folder does not exist."),
])
def test_malformed_api_arguments_raise_one_config_error(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(autoopt.ConfigError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)
    _nothing_left(tmp_path)


def test_bench_of_a_bundle_whose_model_file_is_damaged_is_one_error(tmp_path, capsys):
    import numpy as np

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "autoopt.json").write_text(MANIFEST)
    (bundle / "model.onnx").write_bytes(b"not a model")
    np.savez(bundle / "example_inputs.npz", np.zeros((8, 16), dtype=np.float32))
    code = main(["bench", str(bundle), "--processes", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"its model file {bundle}/model.onnx does not load or run in a fresh process (" in err
    assert "Export the trial again with `autoopt export`." in err
