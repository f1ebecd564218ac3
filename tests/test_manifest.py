"""The bundle's manifest: one dataclass, read and written in bundle/manifest.py only."""

import ast
import json
from pathlib import Path

import pytest

from autoopt.bundle.manifest import FILE, Manifest, read
from autoopt.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent.parent / "autoopt"
# They run where autoopt cannot be imported (the verifier's fresh process, MLflow's pyfunc): they read the JSON.
SELF_CONTAINED = {"bundle/pyfunc.py", "bundle/verifier.py"}
LOADING = {"format": "onnx", "model_file": "model.onnx", "config": {"batch_size": 4}, "inputs": [{"name": "x"}],
           "outputs": {"paths": ["output"]}, "runtime": {"threads": 1, "environment": {"MALLOC_ARENA_MAX": "1"}}}


def test_a_manifest_goes_to_json_and_back_keeping_keys_it_does_not_know(tmp_path):
    written = Manifest(**LOADING, remeasured=None, extra={"from_a_later_autoopt": 1})
    written.write(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    document = json.loads((tmp_path / FILE).read_text())
    assert document["from_a_later_autoopt"] == 1 and document["remeasured"] is None
    assert "verification" not in document and "mlflow_model_uri" not in document  # written once known
    again = read(tmp_path, "test")
    assert again == written and again.as_dict() == document
    assert again["format"] == "onnx" and again.get("padding") is None  # reads like the dict it was
    assert again.fixed_batch is None and again.environment == {"MALLOC_ARENA_MAX": "1"} and again.recorded == {}
    assert Manifest(**{**LOADING, "runtime": {"fixed_batch": 8}}, metrics={"throughput": 2.0}).fixed_batch == 8


def test_a_manifest_without_what_loading_needs_is_refused_with_what_it_lacks(tmp_path):
    (tmp_path / FILE).write_text(json.dumps({"format": "onnx"}))
    with pytest.raises(ConfigError, match=r"test: .*autoopt.json lacks model_file, config, inputs, outputs, runtime: "
                                          r"it is not a manifest written by `autoopt export`"):
        read(tmp_path, "test")


def test_only_the_manifest_module_reads_or_writes_the_manifest_file():
    naming = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(FILE):
                naming.add(path.relative_to(PACKAGE).as_posix())
    assert naming - SELF_CONTAINED == {"bundle/manifest.py"}
