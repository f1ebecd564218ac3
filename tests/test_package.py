"""The package as a whole: a light import, one spelling of options in messages, modules that stay small."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from autoopt.errors import ConfigError, option

PACKAGE = Path(__file__).resolve().parent.parent / "autoopt"


def test_import_autoopt_does_not_import_heavy_dependencies():
    code = ("import sys, autoopt; heavy = [m for m in ('torch', 'onnxruntime', 'mlflow', 'optuna', 'onnx') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_an_error_names_options_as_python_keywords_or_as_cli_flags():
    exc = ConfigError(f"{option('export', 'onnx')} ships an inference model; pass {option('max_accuracy_drop')}.")
    assert str(exc) == "export='onnx' ships an inference model; pass max_accuracy_drop."
    assert exc.for_cli() == "--export onnx ships an inference model; pass --max-accuracy-drop."


def test_the_api_and_the_cli_share_one_validation(tmp_path):
    import autoopt
    from autoopt.options import SearchOptions

    with pytest.raises(ConfigError) as info:
        SearchOptions.parse(export="tflite")
    assert str(info.value) == "export must be one of [aoti, onnx, openvino, torchscript]. Got 'tflite'."
    assert info.value.for_cli() == "--export must be one of [aoti, onnx, openvino, torchscript]. Got 'tflite'."
    with pytest.raises(ConfigError, match=r"target_latncy is not a search option\. .* Did you mean target_latency\?"):
        autoopt.search("tiny", target_latncy="10ms")
    options = SearchOptions.parse(target_latency="20ms", timeout=30, sampler="grid")
    assert options.targets.latency_ms == 20.0 and options.timeout_s == 30.0 and options.warm_start is False


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_modules_and_functions_stay_readable_in_one_screen():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 350:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            lines = fn.end_lineno - fn.lineno + 1
            limit = 60 if (path.name, fn.name) == ("api.py", "search") else 80
            if lines > limit:
                too_long.append(f"{path.name}:{fn.name}: {lines} lines")
    assert too_long == []
