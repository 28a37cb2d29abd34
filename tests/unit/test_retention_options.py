"""[retention] in forge.toml and @forge.job(dead_letter_after=...): defaults, "forever", and refusals."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

import forge
from forge.config import parse_config
from forge.errors import ConfigError, JobDefinitionError

MINIMAL = '[app]\nmodules = ["myapp.jobs"]\n'
DAY = 86400.0


def retention(text: str = "") -> dict[str, float | None]:
    config = parse_config(MINIMAL + text, path="forge.toml", environ={})
    return msgspec.structs.asdict(config.retention)


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + text, path="forge.toml", environ={})
    return str(info.value)


def test_the_defaults_keep_a_day_of_completed_and_a_week_of_cancelled_and_discarded_rows():
    assert retention() == {"completed": DAY, "cancelled": 7 * DAY, "discarded": 7 * DAY, "idempotency": DAY}
    assert retention("[retention]\n") == retention()


def test_the_idempotency_window_is_a_duration_or_forever():
    assert retention('[retention]\nidempotency = "2s"\n')["idempotency"] == 2.0
    assert retention('[retention]\nidempotency = "forever"\n')["idempotency"] is None
    assert "retention.idempotency" in refusal('[retention]\nidempotency = "soon"\n')


def test_durations_are_parsed_and_forever_keeps_rows():
    text = '[retention]\ncompleted = "10s"\ncancelled = "forever"\ndiscarded = 90\n'
    assert retention(text) == {"completed": 10.0, "cancelled": None, "discarded": 90.0, "idempotency": DAY}


@pytest.mark.parametrize(("value", "detail"), [
    ('"never"', "expected a duration"),
    ('"-1s"', ""),
    ('"2000000w"', "100 years"),
    ("true", ""),
])
def test_a_bad_retention_is_refused_naming_its_key_and_line(value, detail):
    message = refusal(f"[retention]\ncompleted = {value}\n")
    assert "'retention.completed'" in message and "forge.toml:4" in message and detail in message, message


def test_an_unknown_retention_key_is_refused_with_a_suggestion():
    message = refusal('[retention]\ncomplete = "1h"\n')
    assert "unknown key 'retention.complete'" in message and "did you mean 'completed'" in message, message


def test_a_jobs_dead_letter_after_may_be_zero_and_is_a_duration_like_the_others():
    at_once = forge.job(name="unit_dla_zero", dead_letter_after=0)(lambda ctx, input: None)
    later = forge.job(name="unit_dla_later", dead_letter_after=timedelta(hours=1))(lambda ctx, input: None)
    default = forge.job(name="unit_dla_default")(lambda ctx, input: None)
    assert (at_once.dead_letter_after, later.dead_letter_after, default.dead_letter_after) == (0.0, 3600.0, None)


@pytest.mark.parametrize(("value", "message"), [
    (-1, "dead_letter_after: expected a finite duration >= 0, got -1"),
    ("5300w", "dead_letter_after: '5300w' is longer than the limit of 100 years"),
    ("soon", "dead_letter_after"),
])
def test_a_bad_dead_letter_after_is_refused_at_definition(value, message):
    with pytest.raises(JobDefinitionError, match=message):
        forge.job(name="unit_dla_bad", dead_letter_after=value)(lambda ctx, input: None)
