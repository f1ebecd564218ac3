"""The CLI through Typer's runner: output, exit codes 0, 2 and 3."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from autoopt.cli import app
from conftest import TINY_MLP

runner = CliRunner()
FAST = ["--min-time", "50ms", "--trial-timeout", "120s", "--no-screen"]  # as conftest.FAST


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_search_prints_trials_and_the_final_table(tmp_path):
    result = invoke("search", TINY_MLP, "--target-latency", "1s", "--trials", "3", "--seed", "0",
                    "--tracking-uri", str(tmp_path), "--study", "cli", *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "#0   batch_size=1 compile_mode=eager " in out
    assert "the reference (every knob at its baseline) and the top feasible trials" in out
    assert "0 (ref)" in out and "1.00x (1.00-1.00)" in out  # re-measured with the top trials at the end
    assert "re-measured interleaved at the end" in out and "Re-measured rows: 10 interleaved rounds" in out
    assert "Ships as " in out and "autoopt export --study cli" in out  # the format the winner ships as
    # the winner the CLI prints is the run MLflow tags, with the figure it printed
    import re

    from mlflow.tracking import MlflowClient

    number, printed = re.search(r"Best: trial (\d+) \(.*\): ([\d,]+) samples/s", out.replace("\n", " ")).groups()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (winner,) = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id],
                                   "tags.`autoopt.winner` = 'true'")
    assert winner.data.tags["autoopt.trial"] == number
    assert f"{winner.data.metrics['remeasured_throughput_samples_per_s']:,.0f}" == printed
    listed = invoke("trials", "--tracking-uri", str(tmp_path))  # no --study: the latest one
    assert listed.exit_code == 0 and "Study cli" in listed.output, listed.output


def test_version_and_a_store_without_studies(tmp_path):
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith(f"autoopt {version('autoopt')} (torch {version('torch')}")
    for command in ("trials", "export"):
        result = invoke(command, "--tracking-uri", str(tmp_path / "empty"))
        assert result.exit_code == 2
        assert "error: No study in this storage yet" in result.output and "Run `autoopt search` first" in result.output


@pytest.mark.parametrize("flag, value, message", [
    ("--target-latency", "100 parsecs", "--target-latency has unknown unit 'parsecs' in '100 parsecs'"),
    ("--target-latency", "-3ms", "--target-latency must not be negative. Got '-3ms'"),
    ("--target-latency", "", "--target-latency is not a quantity: got ''"),
    ("--target-memory", "lots", "--target-memory is not a quantity: got 'lots'"),
    ("--target-memory", "2 GigaBytes", "--target-memory has unknown unit 'GigaBytes'"),
    ("--max-accuracy-drop", "5", "--max-accuracy-drop must be between 0 and 1 (or 0% and 100%). Got '5'"),
    ("--timeout", "10", "--timeout has no unit in '10'"),
    ("--trial-timeout", "soon", "--trial-timeout is not a quantity: got 'soon'"),
    ("--space", "missing.yaml", "Search space file missing.yaml not found"),
    ("--device", "tpu", "device must be one of [auto, cpu, cuda]. Got 'tpu'."),
])
def test_malformed_values_exit_2_with_one_line(tmp_path, flag, value, message):
    result = invoke("search", TINY_MLP, flag, value, "--tracking-uri", str(tmp_path))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output


def test_broken_pipeline_exits_2_naming_the_file(tmp_path, write_file):
    path = write_file("broken.py", "import autoopt\n")
    result = invoke("search", path, "--tracking-uri", str(tmp_path))
    assert result.exit_code == 2
    assert f"error: {path}: defines no PIPELINE." in result.output


def test_no_feasible_trial_exits_3_with_the_closest(tmp_path, write_file):
    space = write_file("space.yaml", "batch_size: [1, 4]\n")
    result = invoke("search", TINY_MLP, "--target-latency", "1us", "--trials", "2", "--seed", "0",
                    "--space", space, "--tracking-uri", str(tmp_path), *FAST)
    assert result.exit_code == 3, result.output
    assert "No trial met all constraints." in result.output
    assert "Closest: trial" in result.output and "is over the 0.001 ms target by" in result.output


def test_python_dash_m_works():
    done = subprocess.run([sys.executable, "-m", "autoopt", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "search" in done.stdout and "ui" in done.stdout


HANGS = """
import os, time, torch, autoopt

class Hangs(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 1:  # the reference trial, in the worker; the pipeline check uses batch 2
            open({marker!r}, "w").close()
            time.sleep(600)
        return x

PIPELINE = autoopt.Pipeline("hangs", Hangs, lambda b: (torch.randn(b, 3),))
"""


@pytest.mark.slow
def test_ctrl_c_stops_the_trial_marks_it_and_exits_130(tmp_path, write_file):
    import signal
    import time

    import optuna
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "in-forward"
    path = write_file("hangs.py", HANGS.format(marker=str(marker)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoopt", "search", path, "--study", "stop", "--trials", "3",
         "--tracking-uri", str(tmp_path / "store"), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Interrupted: the study holds" in output
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "store" / "optuna.journal"
    study = optuna.load_study(study_name="stop", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL"]  # the warm start is enqueued once the reference has finished: on a resume
    assert study.trials[0].user_attrs["reason"] == "interrupted by the user"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store'}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("hangs").experiment_id])
    statuses = {r.data.tags["autoopt.role"]: r.info.status for r in runs}
    assert statuses == {"trial": "KILLED", "study": "KILLED"}


@pytest.mark.slow
def test_ctrl_c_while_another_search_holds_the_device_stops_within_seconds(tmp_path):
    """The worker waits for the machine-wide device lock another search holds while timing: Ctrl-C
    must not wait for that search."""
    import fcntl
    import os
    import signal
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    tmpdir = tmp_path / "tmp"  # the lock lives in the temporary directory: this one holds it, no other test
    tmpdir.mkdir()
    lock = os.open(tmpdir / "autoopt-cpu.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a search does while it times a trial
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoopt", "search", TINY_MLP, "--study", "held", "--trials", "3",
             "--tracking-uri", str(tmp_path / "store"), *FAST],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmpdir)},
        )
        deadline = time.monotonic() + 120
        while not list(tmpdir.glob("*/trial-0")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(tmpdir.glob("*/trial-0")), proc.communicate()[0]
        time.sleep(2)  # the worker is blocked on the lock now
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        took_s = time.monotonic() - sent
    finally:
        os.close(lock)
    assert proc.returncode == 130, output
    assert took_s < 15, f"Ctrl-C took {took_s:.1f} s"
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "store" / "optuna.journal")))
    (trial,) = optuna.load_study(study_name="held", storage=storage).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["reason"] == "interrupted by the user"


def test_ctrl_c_during_the_export_writes_nothing_and_says_how_to_export(tmp_path, monkeypatch):
    from autoopt.bundle import export as bundle

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "_verify", interrupted)
    out = tmp_path / "bundle"
    result = invoke("search", TINY_MLP, "--trials", "2", "--seed", "0", "--study", "exp", "--export", "onnx",
                    "--out", str(out), "--tracking-uri", str(tmp_path / "store"), *FAST)
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert (f"Interrupted during the export: study exp is complete and nothing was written; export its winner with "
            f"`autoopt export --study exp --format onnx --tracking-uri {tmp_path / 'store'} --out {out}`.") in text
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


HANGS_WHILE_ENABLED = """
import os, time, torch, autoopt

class Hangs(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] == 1 and os.path.exists({enabled!r}):  # the reference trial, in the worker
            open({marker!r}, "w").close()
            time.sleep(600)
        return x * 2

PIPELINE = autoopt.Pipeline("hangs_once", Hangs, lambda b: (torch.randn(b, 3),))
"""


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path, write_file):
    import signal
    import time

    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    enabled, marker = tmp_path / "hang-enabled", tmp_path / "in-forward"
    enabled.touch()
    path = write_file("hangs_once.py", HANGS_WHILE_ENABLED.format(enabled=str(enabled), marker=str(marker)))
    space = write_file("space.yaml", "batch_size: [1, 2, 4]\n")
    args = [sys.executable, "-m", "autoopt", "search", path, "--study", "k9", "--trials", "3", "--space", space,
            "--tracking-uri", str(tmp_path / "store"), *FAST]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    enabled.unlink()
    time.sleep(1)  # the worker dies with its parent (PR_SET_PDEATHSIG)
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "store" / "optuna.journal")))
    trials = optuna.load_study(study_name="k9", storage=storage).trials
    assert [t.state.name for t in trials][0] == "FAIL" and "abandoned" in trials[0].user_attrs["reason"]
    # the abandoned trial used no budget: 3 trials counted besides it
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 3 and len(trials) == 4
    assert any(t.user_attrs.get("reference") and t.state.name == "COMPLETE" for t in trials)  # re-enqueued
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store'}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("hangs_once").experiment_id])
    children = [r for r in runs if r.data.tags["autoopt.role"] == "trial"]
    assert sorted(int(r.data.tags["autoopt.trial"]) for r in children) == [0, 1, 2, 3]  # one run per trial
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in children if r.data.tags["autoopt.trial"] == "0"} == {"FAILED"}


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, write_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_file("space.yaml", "batch_size: [1, 4]\ncompile_mode: [eager, onnxruntime]\ngraph_fusion: [basic, none]\n"
                                     "quant_granularity: [per_channel, per_tensor]\n")
    result = invoke("search", TINY_MLP, "--space", space, "--dry-run", "--trials", "7", "--target-latency", "5ms")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    # eager x 2 batch sizes + onnxruntime x 2 fusions x 2 batch sizes; quant_granularity changes nothing unquantized
    assert "Distinct configurations: 6;" in out
    assert "│ graph_fusion │ [basic, none]" in out
    assert "Warm start, right after the reference" in out and "batch_size=4 compile_mode=onnxruntime" in out
    assert "Budget: 7 trials (the reference included), 1 at a time; targets: p95 <= 5 ms, accuracy drop <= 0.01." in out
    assert not (tmp_path / "mlruns").exists()  # no study, no MLflow run
    patient = invoke("search", TINY_MLP, "--space", space, "--dry-run", "--patience", "5")
    assert "or after 5 trials without a better feasible one" in " ".join(patient.output.split())
    assert invoke("search", TINY_MLP, "--dry-run", "--patience", "0").exit_code == 2  # at least 1


def test_dry_run_of_the_default_space_counts_batch_sizes_as_a_factor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import autoopt

    plan = autoopt.plan(TINY_MLP, device="cpu")
    assert plan.counted_as_independent == ["batch_size"] and plan.distinct_configurations % 128 == 0
    assert plan.to_dict()["domains"]["batch_size"] == "1..128, log" and not (tmp_path / "mlruns").exists()


def test_json_documents_of_search_trials_and_export(tmp_path):
    import json

    result = invoke("search", TINY_MLP, "--trials", "2", "--seed", "0", "--tracking-uri", str(tmp_path), "--study", "js",
                    "--remeasure-top", "0", "--export", "onnx", "--out", str(tmp_path / "b1"), "--json", *FAST)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # stdout is the document alone: progress went to stderr
    assert document["study"] == "js" and document["reference"]["number"] == 0 and len(document["trials"]) == 2
    assert document["best"]["feasible"] and document["best"]["metrics"]["throughput"] > 0
    assert "#0   batch_size=1" in result.stderr
    listed = json.loads(invoke("trials", "--tracking-uri", str(tmp_path), "--json").stdout)
    assert listed["study"] == "js" and [t["number"] for t in listed["trials"]] == [0, 1]
    assert document["exported"]["path"] == str(tmp_path / "b1") and document["exported"]["manifest"]["format"] == "onnx"
    exported = invoke("export", "--tracking-uri", str(tmp_path), "--out", str(tmp_path / "b2"), "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["manifest"]["source"] == document["exported"]["manifest"]["source"]


def test_help_groups_options_lists_choices_and_offers_completion():
    import re

    wide = CliRunner(env={"COLUMNS": "200", "TERM": "dumb"})
    text = re.sub(r"\x1b\[[0-9;]*m", "", wide.invoke(app, ["search", "--help"]).output)
    for panel in ("Targets", "Search", "Execution", "Storage", "Export and output"):
        assert f"─ {panel} ─" in text
    assert "[auto|cpu|cuda]" in text and "[tpe|gp|random|grid]" in text and "[aoti|onnx|openvino|torchscript]" in text
    root = wide.invoke(app, ["--help"]).output
    assert "--install-completion" in root and "--version" in root
