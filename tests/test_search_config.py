"""`--config search.yaml`: options from one file, flags over it, and the file a search logs to repeat it."""

import json

import pytest
import yaml
from typer.testing import CliRunner

import autoopt
from autoopt import search_config
from autoopt.cli import app
from autoopt.errors import ConfigError
from autoopt.options import SearchOptions
from conftest import TINY_MLP

SPACE = {"batch_size": [1, 8], "compile_mode": ["eager", "onnxruntime"]}


def write(tmp_path, document, name="search.yaml"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def test_keys_in_either_spelling_paths_beside_the_file_and_an_inline_space(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "model.py").write_text(open(TINY_MLP).read())
    path = write(folder, {"pipeline": "model.py", "target-latency": "5ms", "max_accuracy_drop": "2%", "trials": 6,
                          "space": SPACE})
    values = search_config.read(path)
    assert values["pipeline"] == str(folder / "model.py")  # read from the file's folder, wherever the search runs
    assert values["target_latency"] == "5ms" and values["space"] == SPACE
    plan = autoopt.plan(config=path)
    assert (plan.pipeline, plan.trials, plan.targets["latency_ms"], plan.targets["max_accuracy_drop"]) == \
        ("tiny_mlp", 6, 5.0, 0.02)
    assert plan.space_source == "inline" and plan.domains["batch_size"] == "[1, 8]"
    assert autoopt.plan(config=path, trials=9, target_latency="7ms").trials == 9  # keywords override the file


def test_flags_override_the_file_and_the_others_come_from_it(tmp_path):
    path = write(tmp_path, {"pipeline": TINY_MLP, "target_latency": "5ms", "trials": 6, "sampler": "random",
                            "space": SPACE})
    result = CliRunner().invoke(app, ["search", "--config", str(path), "--trials", "3", "--dry-run", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["trials"] == 3 and plan["targets"]["latency_ms"] == 5.0 and plan["space_source"] == "inline"


@pytest.mark.parametrize("document, message", [
    ({"target_latncy": "5ms"}, "The 'target_latncy' entry of {path} is not a search option. Expected one of "
                               "[pipeline, target_latency, "),
    ({"target_latency": "fast"}, "In {path}: target_latency is not a quantity: got 'fast'"),
    ({"trials": 0}, "In {path}: trials must be a whole number of at least 1. Got 0."),
    ({"device": "tpu"}, "In {path}: device must be one of [auto, cpu, cuda]. Got 'tpu'."),
    ({"pipeline": 3}, "The 'pipeline' entry of {path} must be a pipeline file or a bundled name. Got 3."),
    ({"trials": 3, "Trials": 4}, "The 'Trials' entry of {path} is not a search option"),
    ({"target_latency": "5ms", "target-latency": "6ms"}, "{path} gives 'target_latency' twice: as 'target-latency' and "
                                                         "as 'target_latency'. Keep one."),
    ("- trials: 3\n", "Config file {path} must map search options to values, e.g. 'target_latency: 100ms'. Got a list."),
    ("trials: [3\n", "Config file {path} is not valid YAML (line 2): "),
])
def test_a_bad_config_file_is_one_clear_error(tmp_path, document, message):
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as caught:
        search_config.read(path)
    assert message.format(path=path) in str(caught.value)


def test_a_missing_file_and_options_with_a_config_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="Config file .*nope.yaml not found. Expected a YAML file of search options"):
        autoopt.plan(config=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"search\(\) takes options= or keywords and config=, not both"):
        autoopt.search(TINY_MLP, config=write(tmp_path, {"trials": 2}), options=SearchOptions.parse())
    result = CliRunner().invoke(app, ["search", "--config", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert result.exit_code == 2 and "error: Config file" in result.output


def test_the_logged_file_repeats_the_options(tmp_path):
    space = write(tmp_path, SPACE, "space.yaml")
    opts = SearchOptions.parse(target_latency="250us", target_memory="1.5GB", max_accuracy_drop=0.005, trials=7,
                               timeout="90m", seed=3, study="s1", space=str(space), export="onnx", out=str(tmp_path / "b"),
                               jobs=2, early_stop=False)
    text = search_config.to_yaml("/models/m.py", opts, "s1")
    assert text.startswith("# The options of study s1 (autoopt ") and "autoopt search --config search.yaml" in text
    logged = write(tmp_path, text, "logged.yaml")
    values = search_config.read(logged)
    assert values.pop("pipeline") == "/models/m.py" and "study" not in values and values["space"] == SPACE  # inlined
    again = SearchOptions.parse(**values)
    assert again == SearchOptions.parse(**{**opts.as_keywords(), "study": None, "space": SPACE})
    assert search_config.to_yaml(None, SearchOptions.parse(space="default"), "s2").count("in-memory Pipeline") == 1
    assert "space: default" in search_config.to_yaml(None, SearchOptions.parse(space="default"), "s2")
