"""[node] settings the node cannot run with are refused by load_config, naming the key and its line: the Rust
core's own limits (checked here against the built core's CoreSettings, at both sides of each limit) and lease
settings that would fence a healthy node."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import pytest

from forge.config import Config, load_config
from forge.errors import ConfigError
from forge.supervisor.main import core_settings
from forge.units import LONGEST_DEFINED_DURATION

MINIMAL = '[app]\nmodules = ["myapp.jobs"]\n[node]\n'


def _load(folder: Path, lines: str) -> Config:
    path = folder / "forge.toml"
    path.write_text(MINIMAL + lines + "\n")
    return load_config(path, environ={})


def _refusal(folder: Path, lines: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(folder, lines)
    return str(info.value)


def _core_accepts(folder: Path, key: str, value: float) -> bool:
    """Whether the core's CoreSettings takes `value` for `key` (the rest valid), config.py's checks bypassed."""
    node = msgspec.structs.replace(_load(folder, "").node, **{key: value})
    try:
        core_settings(node, "postgresql://db/app", uuid.uuid4(), {})
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("key", "refused", "accepted"),
    [
        ("poll_interval", 0.0005, 0.001),
        ("heartbeat_interval", 0.0005, 0.001),
        ("maintenance_interval", 0.0005, 0.001),
        ("workers", 2**31, 2**31 - 1),
        ("max_crashes", 2**31, 2**31 - 1),
        ("claim_batch", 2**32, 2**32 - 1),
    ],
)
def test_config_refuses_exactly_what_the_core_refuses(tmp_path, key, refused, accepted):
    message = _refusal(tmp_path, f"{key} = {refused!r}")
    assert message.startswith(f"invalid value for 'node.{key}' at ") and "forge.toml:4" in message
    assert getattr(_load(tmp_path, f"{key} = {accepted!r}").node, key) == accepted
    assert not _core_accepts(tmp_path, key, refused)
    assert _core_accepts(tmp_path, key, accepted)


@pytest.mark.parametrize("key", ["dead_letter_after", "dead_letter_retain"])
def test_durations_are_refused_past_100_years_well_before_the_cores_limit(tmp_path, key):
    century = LONGEST_DEFINED_DURATION
    assert "100 years" in _refusal(tmp_path, f"{key} = {century + 1!r}")
    assert getattr(_load(tmp_path, f"{key} = {century!r}").node, key) == century
    assert _core_accepts(tmp_path, key, century) and not _core_accepts(tmp_path, key, 2.0**64)


def test_an_interval_below_a_millisecond_is_named_as_such(tmp_path):
    message = _refusal(tmp_path, 'heartbeat_interval = "0.1ms"')
    assert "'node.heartbeat_interval'" in message and "0.0001s is below 1ms" in message


def test_a_one_second_lease_renewed_every_300ms_is_accepted(tmp_path):
    node = _load(tmp_path, 'heartbeat_timeout = "1s"\nheartbeat_interval = "300ms"').node
    assert (node.heartbeat_timeout, node.heartbeat_interval) == (1.0, 0.3)


def test_a_lease_too_short_to_renew_before_the_fence_is_refused(tmp_path):
    message = _refusal(tmp_path, 'heartbeat_interval = "50ms"\nheartbeat_timeout = "200ms"')
    assert message.startswith("invalid value for 'node.heartbeat_timeout' at ") and "forge.toml:5" in message
    assert "fence itself 0.15s after" in message and "leaves 63ms" in message and "needs 100ms" in message


def test_the_timeout_must_still_be_three_intervals(tmp_path):
    message = _refusal(tmp_path, 'heartbeat_interval = "2s"\nheartbeat_timeout = "5s"')
    assert "'node.heartbeat_timeout'" in message and "at least 3 x node.heartbeat_interval" in message
