"""The training task: checkpointing, step memory, numerics, the space and pipeline checks, a search."""

import pytest
from typer.testing import CliRunner

import autoopt
from autoopt.trial import training
from autoopt.cli import app
from autoopt.knobs.checkpointing import every, find_blocks, wrap
from autoopt.pipeline import load_pipeline
from autoopt.study.space import load_space
from conftest import TESTS, TINY_MLP

TINY_TRAIN = str(TESTS / "pipelines" / "tiny_train.py")
FP32 = {"precision": "fp32", "compile_mode": "eager", "checkpointing": "none"}


def test_blocks_are_found_and_every_k_wraps_every_kth():
    model = load_pipeline(TINY_TRAIN).build_model()
    name, blocks = find_blocks(model)
    assert name == "encoder.layers" and len(blocks) == 4
    assert [every(v) for v in ("none", "all", "every_3")] == [None, 1, 3]
    assert wrap(blocks, "every_3") == 2  # blocks 0 and 3
    assert "forward" in vars(blocks[0]) and "forward" not in vars(blocks[1])


def test_step_memory_falls_with_finer_checkpointing(tmp_path):
    """The CPU method (the allocator's timeline) orders none > every_2 > all on a small transformer."""
    pipeline = load_pipeline(TINY_TRAIN)
    peaks = {}
    for value in ("none", "every_2", "all"):
        step, _ = training.build_step(pipeline, {**FP32, "checkpointing": value}, "cpu")
        batch = pipeline.make_batch(32)
        step(batch)
        peaks[value] = training.step_peak_memory_mb(step, batch, "cpu", str(tmp_path))
    assert peaks["none"] > peaks["every_2"] > peaks["all"] > 0, peaks


def test_numerics_of_checkpointing_match_the_reference_and_bf16_stays_close(tmp_path):
    pipeline = load_pipeline(TINY_TRAIN)
    reference = training.reference_numerics(pipeline, "cpu", str(tmp_path))
    same = training.numerics(pipeline, {**FP32, "checkpointing": "all"}, "cpu", reference)
    assert same["loss_deviation"] == 0.0 and same["grad_cosine"] == pytest.approx(1.0, abs=1e-9)
    bf16 = training.numerics(pipeline, {**FP32, "precision": "bf16"}, "cpu", reference)
    assert 0 < bf16["loss_deviation"] < 0.05 and 0.98 < bf16["grad_cosine"] <= 1.0 + 1e-9


def test_a_nan_loss_stops_the_trial_with_a_numerics_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_TRAIN_NAN_UNDER_BF16", "1")
    pipeline = load_pipeline(TINY_TRAIN)
    reference = training.reference_numerics(pipeline, "cpu", str(tmp_path))
    with pytest.raises(training.OverTarget, match=r"numerics: the loss is nan at step 1 of 5"):
        training.numerics(pipeline, {**FP32, "precision": "bf16"}, "cpu", reference)


@pytest.mark.parametrize("task, yaml, message", [
    ("train", "quantization: [none, dynamic_int8]\n",
     "The 'quantization' entry of {path} is an inference knob; task='train' searches [precision, batch_size, "
     "threads, compile_mode, checkpointing]. Remove it, or search it with task='infer'."),
    ("infer", "checkpointing: [none, all]\n",
     "The 'checkpointing' entry of {path} is a training knob; task='infer' searches"),
    ("train", "compile_mode: [eager, onnxruntime]\n",
     "The 'compile_mode' entry of {path} must be one of [eager, inductor] for task='train'. Got 'onnxruntime'."),
    ("train", "checkpointing: [none, every_99]\n",
     "The 'checkpointing' entry of {path} must contain only values one of [none, all, every_2"),
])
def test_knobs_of_the_other_task_are_rejected_by_the_space(write_file, task, yaml, message):
    path = write_file("space.yaml", yaml)
    with pytest.raises(autoopt.ConfigError) as info:
        load_space(path, "cpu", task)
    assert str(info.value).startswith(message.format(path=path))


def test_checkpointing_coarser_than_the_blocks_or_without_blocks_is_a_config_error(tmp_path, write_file):
    space = write_file("space.yaml", "checkpointing: [none, every_8]\nbatch_size: [8]\n")
    with pytest.raises(autoopt.ConfigError, match=r"must have k <= 4 \(the blocks of encoder.layers \(4 x "
                                                  r"TransformerEncoderLayer\)\). Got 'every_8'."):
        autoopt.search(TINY_TRAIN, task="train", space=space, tracking_uri=str(tmp_path))
    flat = write_file("flat.py", FLAT)
    space = write_file("space2.yaml", "checkpointing: [none, all]\nbatch_size: [8]\n")
    with pytest.raises(autoopt.ConfigError, match="the model has no repeated blocks autoopt can find"):
        autoopt.search(flat, task="train", space=space, tracking_uri=str(tmp_path))


FLAT = """
import torch, torch.nn.functional as F, autoopt
PIPELINE = autoopt.Pipeline("flat", lambda: torch.nn.Linear(4, 2), lambda b: (torch.randn(b, 4),),
                            make_batch=lambda b: (torch.randn(b, 4), torch.randint(0, 2, (b,))),
                            loss_fn=lambda out, batch: F.cross_entropy(out, batch[1]))
"""


def test_a_pipeline_without_the_training_contract_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["search", TINY_MLP, "--task", "train", "--tracking-uri", str(tmp_path)])
    assert result.exit_code == 2
    assert "--task train needs make_batch and loss_fn in the Pipeline; missing make_batch, loss_fn." in result.output
    result = CliRunner().invoke(app, ["search", TINY_TRAIN, "--task", "train", "--export", "onnx",
                                      "--tracking-uri", str(tmp_path)])
    assert result.exit_code == 2 and "--export ships an inference model" in result.output


@pytest.mark.slow
def test_a_training_search_logs_every_trial_and_reports_the_plain_reference(tmp_path, write_file, monkeypatch):
    monkeypatch.setenv("TINY_TRAIN_NAN_UNDER_BF16", "1")
    space = write_file("space.yaml", "batch_size: [16, 32, 64, 128]\nprecision: [fp32, bf16]\n"
                                     "checkpointing: [none, all]\n")
    result = autoopt.search(TINY_TRAIN, task="train", space=space, trials=8, seed=0, target_memory="60MB",
                            tracking_uri=str(tmp_path), min_time="0.1s")
    by_state = {}
    for t in result.trials:
        by_state.setdefault(t.state, []).append(t)
    assert {k: v for k, v in result.trials[0].config.items() if k != "threads"} == {
        "precision": "fp32", "batch_size": 16, "compile_mode": "eager", "checkpointing": "none"}
    assert all(t.reason.startswith(("numerics: the loss is nan", "memory: peak"))
               for t in by_state.get("PRUNED", [])), [t.reason for t in by_state.get("PRUNED", [])]
    assert all(t.config["precision"] == "fp32" for t in by_state["COMPLETE"])
    done = by_state["COMPLETE"]
    assert all({"grad_cosine", "loss_deviation", "peak_memory_mb", "throughput"} <= set(t.metrics) for t in done)
    ref = result.reference
    assert ref is not None and ref.config["checkpointing"] == "none" and ref.feasible
    assert result.best is not None and result.speedup(result.best) >= 1.0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([result.experiment_id], "tags.`autoopt.role` = 'trial'")
    assert sorted(int(r.data.tags["autoopt.trial"]) for r in runs) == list(range(8))
    with pytest.raises(autoopt.ConfigError, match="searched the training step \\(task='train'\\): there is no inference"):
        autoopt.export(result.study_name, tracking_uri=str(tmp_path))


@pytest.mark.gpu
def test_fp16_training_step_uses_a_grad_scaler_on_cuda(tmp_path):
    pipeline = load_pipeline(TINY_TRAIN)
    reference = training.reference_numerics(pipeline, "cuda", str(tmp_path))
    result = training.numerics(pipeline, {**FP32, "precision": "fp16", "checkpointing": "every_2"}, "cuda", reference)
    assert result["loss_deviation"] < 0.05 and result["grad_cosine"] > 0.98
    step, _ = training.build_step(pipeline, {**FP32, "precision": "fp16"}, "cuda")
    batch = tuple(t.cuda() for t in pipeline.make_batch(32))
    step(batch)
    assert training.step_peak_memory_mb(step, batch, "cuda", str(tmp_path)) > 0


def test_the_training_step_takes_its_forward_from_the_compile_mode_s_runtime():
    from autoopt import runtimes
    from autoopt.errors import Unsupported

    pipeline = load_pipeline(TINY_TRAIN)
    with pytest.raises(Unsupported, match=r"compile_mode=onnxruntime runs no training step \(--task train\)"):
        training.build_step(pipeline, {**FP32, "compile_mode": "onnxruntime"}, "cpu")
    model = pipeline.build_model()
    assert runtimes.get("eager").train_forward(model, FP32) is model
    assert runtimes.get("inductor").train_forward is not None and runtimes.get("openvino").train_forward is None
