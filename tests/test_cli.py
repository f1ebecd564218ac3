"""The CLI through Typer's runner: output, exit codes 0, 2 and 3."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from autoopt.cli import app
from conftest import TINY_MLP

runner = CliRunner()
FAST = ["--min-time", "50ms", "--trial-timeout", "120s"]


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_search_prints_trials_and_the_final_table(tmp_path):
    result = invoke("search", TINY_MLP, "--target-latency", "1s", "--trials", "3", "--seed", "0",
                    "--tracking-uri", str(tmp_path), "--study", "cli", *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "#0   precision=fp32 batch_size=1 compile_mode=eager" in out
    assert "the reference and the top feasible trials" in out
    assert "0 (ref)" in out and "1.00x" in out
    assert "Best: trial" in out


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


def test_no_feasible_trial_exits_3_with_the_closest(tmp_path):
    result = invoke("search", TINY_MLP, "--target-latency", "1us", "--trials", "2", "--seed", "0",
                    "--tracking-uri", str(tmp_path), *FAST)
    assert result.exit_code == 3, result.output
    assert "No trial met all constraints." in result.output
    assert "Closest: trial" in result.output and "is over the 0.001 ms target by" in result.output


def test_python_dash_m_works():
    done = subprocess.run([sys.executable, "-m", "autoopt", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "search" in done.stdout and "ui" in done.stdout
