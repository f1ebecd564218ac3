import pytest

from autoopt.errors import ConfigError
from autoopt.units import parse_duration_s, parse_fraction, parse_latency_ms, parse_memory_mb


@pytest.mark.parametrize("text, ms", [("100ms", 100), ("0.1s", 100), ("250us", 0.25), ("250µs", 0.25), ("1.5 s", 1500)])
def test_latency_forms(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text, message", [
    ("100 parsecs", "target_latency has unknown unit 'parsecs' in '100 parsecs'; use a form such as '250us', '100ms', '0.1s', '30m' or '2h'."),
    ("100", "target_latency has no unit in '100'; use a form such as '250us', '100ms', '0.1s', '30m' or '2h'."),
    ("-5ms", "target_latency must not be negative. Got '-5ms'; use a form such as '250us', '100ms', '0.1s', '30m' or '2h'."),
    ("", "target_latency is not a quantity: got ''; use a form such as '250us', '100ms', '0.1s', '30m' or '2h'."),
    ("fast", "target_latency is not a quantity: got 'fast'; use a form such as '250us', '100ms', '0.1s', '30m' or '2h'."),
    ("0ms", "target_latency must be greater than zero. Got '0ms'."),
])
def test_latency_errors_name_flag_value_and_forms(text, message):
    with pytest.raises(ConfigError) as info:
        parse_latency_ms(text, "target_latency")
    assert str(info.value) == message
    assert info.value.exit_code == 2


def test_latency_number_is_milliseconds_in_the_python_api():
    assert parse_latency_ms(12.5) == 12.5
    with pytest.raises(ConfigError, match="target_latency must be a positive number of milliseconds. Got -1"):
        parse_latency_ms(-1, "target_latency")


@pytest.mark.parametrize("text, mb", [("512MB", 512), ("2GiB", 2 * 2**30 / 1e6), ("1.5GB", 1500), ("100kb", 0.1)])
def test_memory_forms(text, mb):
    assert parse_memory_mb(text) == pytest.approx(mb)


@pytest.mark.parametrize("text, message", [
    ("512", "target_memory has no unit in '512'; use a form such as '512MB', '1.5GB' or '2GiB'."),
    ("1 GBytes", "target_memory has unknown unit 'GBytes' in '1 GBytes'; use a form such as '512MB', '1.5GB' or '2GiB'."),
    ("-1GB", "target_memory must not be negative. Got '-1GB'; use a form such as '512MB', '1.5GB' or '2GiB'."),
    ("", "target_memory is not a quantity: got ''; use a form such as '512MB', '1.5GB' or '2GiB'."),
])
def test_memory_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_memory_mb(text, "target_memory")
    assert str(info.value) == message


@pytest.mark.parametrize("text, frac", [("1%", 0.01), ("0.5%", 0.005), ("0.01", 0.01), ("0", 0.0), (0.02, 0.02)])
def test_fraction_forms(text, frac):
    assert parse_fraction(text) == pytest.approx(frac)


@pytest.mark.parametrize("text, message", [
    ("5", "max_accuracy_drop must be between 0 and 1 (or 0% and 100%). Got '5'; use a form such as '1%', '0.5%' or '0.01'."),
    ("150%", "max_accuracy_drop must be between 0 and 1 (or 0% and 100%). Got '150%'; use a form such as '1%', '0.5%' or '0.01'."),
    ("-1%", "max_accuracy_drop must not be negative. Got '-1%'; use a form such as '1%', '0.5%' or '0.01'."),
    ("1pt", "max_accuracy_drop has unknown unit 'pt' in '1pt'; use a form such as '1%', '0.5%' or '0.01'."),
    ("", "max_accuracy_drop is not a quantity: got ''; use a form such as '1%', '0.5%' or '0.01'."),
])
def test_fraction_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_fraction(text, "max_accuracy_drop")
    assert str(info.value) == message


def test_durations():
    assert parse_duration_s("30m") == 1800
    assert parse_duration_s("2h") == 7200
    with pytest.raises(ConfigError, match="timeout has no unit in '600'"):
        parse_duration_s("600", "timeout")
