import pytest

from autoopt import knobs
from autoopt.errors import ConfigError
from autoopt.study.space import load_space


def test_default_space_drops_fp16_on_cpu_with_a_note():
    space = load_space(None, "cpu")
    assert space.domains["precision"].choices == ("fp32", "bf16")
    assert space.domains["compile_mode"].choices == ("eager", "torchscript", "inductor", "onnxruntime", "openvino")
    assert any("precision=fp16 dropped" in n and "CUDA" in n for n in space.notes)
    assert space.reference_config() == knobs.reference_config()


@pytest.mark.parametrize("name", ["default", "cpu", "gpu"])
def test_every_bundled_space_loads(name):
    assert load_space(name, "cpu").domains


def test_bundled_space_by_name():
    domain = load_space("default", "cpu").domains["batch_size"]
    assert (domain.low, domain.high, domain.log) == (1, 128, True)


def test_batch_sizes_of_a_range_are_its_powers_of_two_and_its_ends(write_file):
    assert load_space(None, "cpu").batch_sizes() == [1, 2, 4, 8, 16, 32, 64, 128]
    assert load_space(write_file("s.yaml", "batch_size: {low: 1, high: 100, step: 3}\n"), "cpu").batch_sizes() == [
        1, 4, 16, 64, 100]
    assert load_space(write_file("s.yaml", "batch_size: [64, 1, 8]\n"), "cpu").batch_sizes() == [1, 8, 64]


@pytest.mark.parametrize("cores, expected", [(2, (1, 2)), (4, (1, 2, 4)), (32, (1, 2, 16, 32))])
def test_threads_follow_the_cores_of_the_machine(write_file, monkeypatch, cores, expected):
    from autoopt.knobs import threads

    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    space = load_space(write_file("s.yaml", "threads: [1, 2, cores/2, cores]\n"), "cpu")
    assert space.domains["threads"].choices == expected  # one value once; above the cores: dropped
    ranged = load_space(write_file("s.yaml", "threads: {low: 1, high: cores}\n"), "cpu").domains["threads"]
    assert (ranged.low, ranged.high) == (1, cores)


def test_missing_knobs_stay_at_baseline(write_file):
    space = load_space(write_file("s.yaml", "batch_size: [1, 4]\n"), "cpu")
    assert space.domains["precision"].choices == ("fp32",)
    assert space.domains["compile_mode"].choices == ("eager",)


def test_threads_range_is_capped_at_the_cores(write_file):
    space = load_space(write_file("s.yaml", "threads: {low: 1, high: 999}\n"), "cpu")
    assert space.domains["threads"].high == knobs.REGISTRY["threads"].baseline
    assert any("threads range" in n and "capped" in n for n in space.notes)


def test_numeric_domain(write_file):
    space = load_space(write_file("s.yaml", "batch_size: {low: 1, high: 256, log: true}\n"), "cpu")
    d = space.domains["batch_size"]
    assert (d.low, d.high, d.log) == (1, 256, True)


def test_baseline_is_added_to_a_list_that_lacks_it(write_file):
    space = load_space(write_file("s.yaml", "batch_size: [16, 32]\n"), "cpu")
    assert space.domains["batch_size"].choices == (1, 16, 32)
    assert any("batch_size=1 added" in n for n in space.notes)


@pytest.mark.parametrize("text, message", [
    ("precision: [fp32, int3]\n",
     "The 'precision' entry of {f} must contain only values one of [fp32, bf16, fp16]. Got 'int3'."),
    ("quantisation: [none]\n",
     "The 'quantisation' entry of {f} is not a knob. Expected one of [pruning_amount, pruning_method, distill_steps, "
     "quantization, quant_granularity, precision, batch_size, threads, compile_mode, graph_fusion, checkpointing, int8_layers, "
     "trim_padding]."),
    ("batch_size: []\n",
     "The 'batch_size' entry of {f} must list at least one value, an integer in [1, 65536]. Got []."),
    ("batch_size: [1, 0]\n",
     "The 'batch_size' entry of {f} must contain only values an integer in [1, 65536]. Got 0."),
    ("batch_size: [1, 2.5]\n",
     "The 'batch_size' entry of {f} must contain only values an integer in [1, 65536]. Got 2.5."),
    ("batch_size: [1, 1]\n", "The 'batch_size' entry of {f} lists a value twice. Got [1, 1]."),
    ("threads: [1, all]\n",
     "The 'threads' entry of {f} must contain only values an integer in [1, 1024] or 'cores' or 'cores/N'. Got 'all'."),
    ("threads: [1, cores/0]\n",
     "The 'threads' entry of {f} must contain only values an integer in [1, 1024] or 'cores' or 'cores/N'. Got 'cores/0'."),
    ("threads: [cores, cores]\n", "The 'threads' entry of {f} lists a value twice. Got ['cores', 'cores']."),
    ("precision: {low: 1, high: 2}\n",
     "The 'precision' entry of {f} must be a list of values, one of [fp32, bf16, fp16]. Got a mapping {{'low': 1, 'high': 2}}."),
    ("batch_size: {low: 8, high: 4}\n", "The 'batch_size' entry of {f} must have low <= high. Got low=8, high=4."),
    ("batch_size: {low: 1, high: 64, step: 2, log: true}\n",
     "The 'batch_size' entry of {f} cannot have both 'step' and 'log'. Got {{'low': 1, 'high': 64, 'step': 2, 'log': True}}."),
    ("batch_size: {low: 1}\n",
     "The 'batch_size' entry of {f} must be a mapping with 'low' and 'high' and optionally 'step' or 'log'. Got {{'low': 1}}."),
    ("batch_size: {low: 2, high: 64}\n",
     "The 'batch_size' entry of {f} must include the reference value 1. Got 2..64; widen the range or use a list."),
    ("batch_size: 8\n",
     "The 'batch_size' entry of {f} must be a list (categorical) or a mapping {{low, high, step|log}} (numeric), an integer in [1, 65536]. Got 8."),
    ("- batch_size\n", "{f} must map knob names to domains. Got a list."),
    ("precision: [fp16]\n",
     "The 'precision' entry of {f} has no value that runs on this cpu machine. Got ['fp16']; see the warnings above."),
])
def test_validation_messages(write_file, text, message):
    path = write_file("space.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_space(path, "cpu")
    assert str(info.value) == message.format(f=path)


def test_invalid_yaml_names_the_line(write_file):
    path = write_file("bad.yaml", "batch_size: [1, 2\nprecision: [fp32]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(line \d+\)"):
        load_space(path, "cpu")


def test_missing_file():
    with pytest.raises(ConfigError, match=r"Search space file nope.yaml not found. Expected a YAML file path or one of \['cpu', 'default', 'gpu', 'train'\]."):
        load_space("nope.yaml", "cpu")


def test_suggest_returns_a_plain_dict_of_every_knob_of_the_task():
    import optuna

    space = load_space(None, "cpu")
    study = optuna.create_study()
    config = space.suggest(study.ask())
    assert set(config) == set(knobs.REGISTRY) - {"checkpointing"}
    train = load_space(None, "cpu", "train")
    assert set(train.suggest(optuna.create_study().ask())) == {"batch_size", "precision", "threads", "compile_mode", "checkpointing"}
    assert train.reference_config()["batch_size"] == 16  # the smallest batch of search_spaces/train.yaml


def test_warm_start_gives_the_known_good_combinations_the_space_can_express(write_file):
    seeds = load_space(None, "cpu").warm_start("cpu")
    assert [(s["quantization"], s["compile_mode"], s["batch_size"]) for s in seeds] == [
        ("static_int8", "torchscript", 16), ("dynamic_int8", "onnxruntime", 16), ("none", "onnxruntime", 16)]
    narrow = load_space(write_file("s.yaml", "batch_size: [1, 4]\ncompile_mode: [eager, onnxruntime]\n"), "cpu")
    assert [s["compile_mode"] for s in narrow.warm_start("cpu")] == ["onnxruntime"]  # int8 is not in this space
    assert load_space(None, "cpu", "train").warm_start("cpu")[0]["precision"] == "bf16"
    space = load_space(None, "cpu")  # batch sizes 1..128: [1, 2, 4, ..., 128]
    assert {s["batch_size"] for s in space.warm_start("cpu", max_batch=12.5)} == {8}  # capped under a latency target
    assert {s["batch_size"] for s in space.warm_start("cpu", max_batch=500)} == {16}  # never above the middle
    assert {s["batch_size"] for s in space.warm_start("cpu", max_batch=0.3)} == {1}
