import pytest

from autoopt.errors import PipelineError
from autoopt.pipeline import Pipeline, bundled_pipelines, check_pipeline, load_pipeline
from conftest import TINY_DICT, TINY_MLP

HEADER = "import torch\nimport autoopt\n"
GOOD_FUNCS = (
    "def build_model():\n    return torch.nn.Linear(4, 2)\n"
    "def make_inputs(batch_size):\n    return (torch.randn(batch_size, 4),)\n"
)


def test_bundled_default_is_listed_and_loads():
    assert "digits_cnn" in bundled_pipelines()
    pipe = load_pipeline(None)
    assert pipe.name == "digits_cnn" and pipe.source.endswith("pipelines/digits_cnn.py")


def test_loads_a_file_and_checks_it():
    pipe = load_pipeline(TINY_DICT)
    assert pipe.name == "tiny_dict" and pipe.evaluate is None
    check_pipeline(pipe)
    check_pipeline(load_pipeline(TINY_MLP))


def _error(path) -> str:
    with pytest.raises(PipelineError) as info:
        check_pipeline(load_pipeline(path))
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file():
    assert _error("no/such/pipeline.py") == "no/such/pipeline.py: pipeline file not found."


def test_unknown_bundled_name():
    assert _error("resnet9000") == (
        f"resnet9000: no such pipeline file, and not a bundled pipeline name. "
        f"Expected a path to a .py file or one of {bundled_pipelines()}."
    )


def test_import_failure(write_file):
    path = write_file("p.py", "import torch\nimport not_a_module_anywhere\n")
    assert _error(path) == f"{path}: failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"


def test_syntax_error(write_file):
    path = write_file("p.py", "def broken(:\n")
    assert _error(path).startswith(f"{path}: failed to import: SyntaxError")


def test_no_pipeline(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS)
    assert _error(path) == f"{path}: defines no PIPELINE. Add `PIPELINE = autoopt.Pipeline(name=..., ...)`."


def test_pipeline_of_the_wrong_type(write_file):
    path = write_file("p.py", HEADER + "PIPELINE = {'name': 'x'}\n")
    assert _error(path) == f"{path}: PIPELINE must be an autoopt.Pipeline. Got dict."


def test_build_model_returns_wrong_type(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "PIPELINE = autoopt.Pipeline('p', lambda: 'model', make_inputs)\n")
    assert _error(path) == f"{path}: build_model() must return a torch.nn.Module. Got str."


def test_make_inputs_returns_a_list(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "PIPELINE = autoopt.Pipeline('p', build_model, lambda b: [torch.randn(b, 4)])\n")
    assert _error(path) == f"{path}: make_inputs(2) must return a non-empty tuple of tensors, e.g. (x,). Got list."


def test_make_inputs_ignores_batch_size(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "PIPELINE = autoopt.Pipeline('p', build_model, lambda b: (torch.randn(3, 4),))\n")
    assert _error(path) == (
        f"{path}: make_inputs(2) must return tensors whose first dimension is the batch size 2; input 0 has shape (3, 4)."
    )


def test_build_model_raises(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "def bad():\n    raise RuntimeError('no weights')\n"
                      "PIPELINE = autoopt.Pipeline('p', bad, make_inputs)\n")
    assert _error(path) == f"{path}: build_model raised RuntimeError: no weights"


def test_model_returns_a_string(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "class M(torch.nn.Module):\n    def forward(self, x):\n        return 'no'\n"
                      "PIPELINE = autoopt.Pipeline('p', M, make_inputs)\n")
    assert _error(path) == f"{path}: the model of build_model() must return a tensor, or a tuple or dict of tensors. Got str."


def test_pipeline_fields_are_validated(write_file):
    path = write_file("p.py", HEADER + GOOD_FUNCS + "PIPELINE = autoopt.Pipeline('', build_model, make_inputs)\n")
    with pytest.raises(PipelineError, match="Pipeline 'name' must be a non-empty string. Got ''."):
        load_pipeline(path)
    with pytest.raises(PipelineError, match="Pipeline 'evaluate' must be a function or None. Got 3."):
        Pipeline("x", lambda: None, lambda b: None, evaluate=3)
