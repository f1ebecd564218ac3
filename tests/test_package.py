"""The package as a whole: a light import, one spelling of options in messages, modules that stay small."""

import ast
import re
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


def _imports(path: Path) -> set[str]:
    """The autoopt modules `path` imports anywhere (inside functions too), as dotted names."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = (*package[:len(package) - node.level + 1], *filter(None, (node.module or "").split(".")))
            for alias in node.names:  # `from . import knobs` imports a module; `from .x import y`, module x
                module = (*target, alias.name)
                is_module = PACKAGE.parent.joinpath(*module).with_suffix(".py").exists() or \
                    PACKAGE.parent.joinpath(*module, "__init__.py").exists()
                found.add(".".join(module if is_module else target))
    return found - {".".join(here).removesuffix(".__init__")}


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    """No import cycles, lazy imports inside functions included: the layers read in one direction."""
    graph = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
             for p in PACKAGE.rglob("*.py")}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # a package imports its own modules (its registry): that edge is the package's, not a cycle
    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a]
                    if a in reach(b) and not b.startswith(a + ".") and not a.startswith(b + "."))
    assert cycles == []


def test_optuna_attributes_are_spelled_in_one_module_and_only_through_optuna_s_public_api():
    """Trial and study user_attrs are read and written through study/attrs.py (typed, checked names); no module
    reaches into Optuna's private storage handles."""
    spelled, private = set(), set()
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("user_attrs", "set_user_attr", "set_trial_user_attr"):
                spelled.add(where)
            if isinstance(node, ast.keyword) and node.arg == "user_attrs":
                spelled.add(where)
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_study_id"):
                private.add(f"{where}:{node.lineno}")
    assert spelled == {"study/attrs.py"} and not private


def test_a_misspelt_trial_attribute_is_refused_before_it_is_stored():
    from autoopt.study import attrs

    class Trial:
        user_attrs: dict = {}

        def set_user_attr(self, key, value):
            self.user_attrs[key] = value

    trial = Trial()
    with pytest.raises(TypeError, match="not a trial attribute: refrence"):
        attrs.record(trial, refrence=True)
    attrs.record(trial, reference=True, metrics={"throughput": 1.0})
    assert trial.user_attrs == {"reference": True, "metrics": {"throughput": 1.0}}
    kept = attrs.TrialAttrs.of(trial)
    assert kept.reference and kept.metrics == {"throughput": 1.0} and kept.reason is None


def test_the_readme_s_architecture_names_every_module_of_the_stages():
    readme = (PACKAGE.parent / "README.md").read_text()
    drawn = readme[readme.index("## Extending autoopt"):readme.index("No module imports one that imports it back")]
    named = set(re.findall(r"[\w]+\.py", drawn))
    modules = {p.name for folder in (PACKAGE, *(PACKAGE / s for s in ("study", "trial", "report", "bundle")))
               for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert modules - named == set()
