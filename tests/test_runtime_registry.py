"""The runtime contract read from the registry: a runtime of one module (tests/plugins/torch_export_runtime.py),
registered by one entry, flows through the search, --export's choices, the manifest, the fresh-process verifier
and the logged MLflow model with no other edit."""

import importlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoopt import knobs, runtimes
from autoopt.cli import app
from conftest import TINY_MLP

PLUGINS = Path(__file__).parent / "plugins"
runner = CliRunner()


@pytest.fixture
def registered(monkeypatch):
    """The one registry entry, in this process and (inherited) in the search's workers."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("AUTOOPT_RUNTIMES", "torch_export=torch_export_runtime")
    monkeypatch.setattr(runtimes, "RUNTIMES", dict(runtimes.RUNTIMES))  # undone after the test
    runtimes.load_plugins()


def test_a_registered_runtime_completes_the_contract_and_joins_every_derived_table(registered):
    runtime = runtimes.get("torch_export")
    assert runtime is importlib.import_module("torch_export_runtime")
    assert runtime.REALIZES == frozenset() and runtime.PROGRAMS == frozenset()  # the defaults, not stubs
    assert runtime.unavailable("torch_export", "cpu") is None and runtime.conflict({}, "cpu") is None
    assert "torch_export" in knobs.REGISTRY["compile_mode"].choices
    assert runtimes.FORMATS["pt2program"] == "torch_export" and runtimes.format_for("torch_export") == "pt2program"
    from autoopt.options import SearchOptions

    assert SearchOptions.parse(export="pt2program").export == "pt2program"


def test_a_wrong_plugin_entry_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AUTOOPT_RUNTIMES", "torch_export")
    with pytest.raises(ValueError, match="AUTOOPT_RUNTIMES: 'torch_export' is not compile_mode=package.module"):
        runtimes.load_plugins()


@pytest.mark.slow
def test_a_runtime_of_one_module_flows_through_search_export_verification_and_mlflow(registered, tmp_path):
    import mlflow

    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [1, 4]\ncompile_mode: [eager, torch_export]\n")
    done = runner.invoke(app, ["search", TINY_MLP, "--trials", "3", "--space", str(space), "--export", "pt2program",
                               "--out", str(tmp_path / "b"), "--tracking-uri", str(tmp_path / "store"), "--seed", "0",
                               "--register", "plugin", "--min-time", "0.05s", "--no-warm-start", "--remeasure-top", "0"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "b" / "autoopt.json").read_text())
    assert manifest["format"] == "pt2program" and manifest["config"]["compile_mode"] == "torch_export"
    assert manifest["verification"]["min_cosine"] > 0.9999  # the plugin's plain loader, in a process without autoopt
    assert "torch" in manifest["versions"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store'}/mlflow.db")
    requirements = open(mlflow.pyfunc.get_model_dependencies("models:/plugin/1")).read()
    assert f"torch=={manifest['versions']['torch']}" in requirements
