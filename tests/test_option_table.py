"""One option table: the CLI flags, SearchOptions, --config keys and as_keywords all come from it."""

import dataclasses
import re

from typer.testing import CliRunner

from autoopt import search_config
from autoopt.cli import app
from autoopt.option_table import TABLE
from autoopt.options import SearchOptions


def test_every_option_of_the_table_is_a_flag_a_field_and_a_config_key_with_its_help():
    text = re.sub(r"\x1b\[[0-9;]*m", "", CliRunner(env={"COLUMNS": "300", "TERM": "dumb"}).invoke(
        app, ["search", "--help"]).output)
    fields = {f.name for f in dataclasses.fields(SearchOptions)}
    for o in TABLE:
        flag = "--" + o.name.replace("_", "-")
        assert re.search(rf"{flag}\s", text), flag
        assert o.help[:40] in " ".join(text.split()), o.name  # the table's help, as --help wraps it
        assert o.attribute.startswith("targets.") or o.attribute in fields
        assert o.name in search_config.KEYS and o.name in SearchOptions.__doc__
    assert fields == {"targets"} | {o.attribute for o in TABLE if "." not in o.attribute}


def test_as_keywords_gives_back_what_parse_reads_for_every_option(tmp_path):
    options = SearchOptions.parse(target_latency="20ms", target_memory="1GB", max_accuracy_drop=0.02, timeout="2m",
                                  trial_timeout=90, min_time="250ms", export="onnx", out=str(tmp_path / "b"), seed=3,
                                  patience=4, seq_len=16, texts=str(tmp_path / "t.txt"), sampler="random", jobs=2)
    keywords = options.as_keywords()
    assert list(keywords) == [o.name for o in TABLE]
    assert keywords["timeout"] == "120s" and keywords["max_accuracy_drop"] == "2%" and keywords["out"] == str(tmp_path / "b")
    assert SearchOptions.parse(**keywords) == options
