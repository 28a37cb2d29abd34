"""forge.units: durations to float seconds, sizes to int bytes, clear errors otherwise."""

import datetime

import pytest

from forge.units import UnitError, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        ("0", 0.0),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
        (datetime.timedelta(minutes=2, milliseconds=500), 120.5),
    ],
)
def test_parse_duration_accepts(value, seconds):
    result = parse_duration(value, what="node.x")
    assert result == pytest.approx(seconds)
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    ["-1s", -3, -0.5, datetime.timedelta(seconds=-1), True, False, None, "abc", "5 minutes", "5", "10y",
     "s", "", float("inf"), float("nan"), [1]],
)
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value, what="node.shutdown_grace")
    assert "node.shutdown_grace" in str(info.value)
    assert repr(value) in str(info.value)


def test_unit_error_detail_omits_what():
    with pytest.raises(UnitError) as info:
        parse_duration("soon", what="node.kill_grace")
    assert info.value.what == "node.kill_grace"
    assert "node.kill_grace" not in info.value.detail
    assert "'soon'" in info.value.detail


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("8Gi", 8 * 2**30),
        ("1GB", 10**9),
        ("100M", 100 * 10**6),
        ("64kb", 64_000),
        ("2KiB", 2048),
        ("1.5GiB", 3 * 2**29),
        ("10", 10),
        ("10B", 10),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_accepts(value, size):
    result = parse_size(value, what="node.max_worker_memory")
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize("value", ["-1M", -1, True, 1.5, "12XB", "M", "", "lots", None])
def test_parse_size_refuses(value):
    with pytest.raises(ValueError) as info:
        parse_size(value, what="node.max_worker_memory")
    assert "node.max_worker_memory" in str(info.value)
    assert repr(value) in str(info.value)
