"""@forge.job and forge.Retry: definitions are validated when the module is imported."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import msgspec
import pytest

import forge
from forge.errors import JobDefinitionError
from forge.job import registry
from forge.units import LONGEST_DEFINED_DURATION


class In(msgspec.Struct):
    n: int


class NetworkError(Exception):
    pass


class SubNetworkError(NetworkError):
    pass


def test_defaults_are_the_documented_ones():
    # The README: 3 attempts, exponential backoff from 1 s capped at 1 h, no jitter, every error retried,
    # timeout 30 minutes, priority normal, capability general.
    @forge.job
    def unit_defaults(ctx, input: In) -> None: ...

    assert registry()["unit_defaults"] is unit_defaults
    retry = unit_defaults.retry
    assert (retry.max_attempts, retry.backoff, retry.base, retry.max_backoff, retry.jitter) == (
        3, "exponential", 1.0, 3600.0, 0.0
    )
    assert retry.on == () and retry.retries(Exception("any error"))
    assert unit_defaults.timeout == 30 * 60.0
    assert (unit_defaults.priority, unit_defaults.priority_rank) == ("normal", 2)
    assert unit_defaults.capability == "general"
    assert (unit_defaults.resources, unit_defaults.heartbeat_timeout, unit_defaults.dead_letter_retain) == (
        None, None, None
    )
    assert unit_defaults.input_type is In
    assert not unit_defaults.is_async


def test_options_and_async_detection():
    @forge.job(name="unit_renamed", timeout=timedelta(minutes=2), priority="critical", worker_capability="media")
    async def something(ctx, input: In) -> int:
        return input.n

    assert something.name == "unit_renamed" and something.is_async
    assert something.timeout == 120.0
    assert something.priority_rank == 0
    assert something.capability == "media"


@pytest.mark.parametrize("timeout", ["30s", 30, 30.0, timedelta(seconds=30)])
def test_durations_in_every_form(timeout):
    @forge.job(name=f"unit_timeout_{type(timeout).__name__}_{timeout}".replace(" ", "_"), timeout=timeout)
    def fn(ctx, input: In) -> None: ...

    assert fn.timeout == 30.0


def test_two_jobs_with_one_name_is_an_error():
    @forge.job(name="unit_twice")
    def first(ctx, input: In) -> None: ...

    with pytest.raises(JobDefinitionError, match="two jobs are named 'unit_twice'"):

        @forge.job(name="unit_twice")
        def second(ctx, input: In) -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "urgent"}, "priority='urgent'"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"resources": {"disk": 1}}, "unknown key"),
        ({"worker_capability": ""}, "worker_capability"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(JobDefinitionError, match=message):

        @forge.job(name="unit_bad", **options)
        def fn(ctx, input: In) -> None: ...


def test_job_function_must_take_ctx_and_input():
    with pytest.raises(JobDefinitionError, match="exactly"):

        @forge.job(name="unit_arity")
        def fn(ctx) -> None: ...


def test_resources_are_parsed():
    @forge.job(name="unit_resources", resources={"cpu": 4, "memory": "8Gi", "gpu": 1})
    def fn(ctx, input: In) -> None: ...

    assert fn.resources.to_json() == {"cpu": 4, "memory": 8 * 1024**3, "gpu": 1}


def test_retry_matches_classes_subclasses_and_names():
    policy = forge.Retry(on=(NetworkError, "RateLimitError"))
    rate_limit = type("RateLimitError", (Exception,), {})
    assert policy.retries(NetworkError())
    assert policy.retries(SubNetworkError())
    assert policy.retries(rate_limit())
    assert not policy.retries(ValueError())
    assert forge.Retry().retries(ValueError())


def test_retry_names_match_along_the_class_hierarchy():
    assert forge.Retry(on="NetworkError").retries(SubNetworkError())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"backoff": "random"},
        {"jitter": 2},
        {"max_backoff": "later"},
        {"on": (42,)},
        {"on": (object,)},
    ],
)
def test_bad_retry_policies_are_refused(kwargs):
    with pytest.raises(JobDefinitionError):
        forge.Retry(**kwargs)


def test_retry_durations():
    policy = forge.Retry(backoff="linear", base="2s", max_backoff="5m", jitter=0.1)
    assert (policy.base, policy.max_backoff, policy.jitter) == (2.0, 300.0, 0.1)


def test_importing_forge_does_not_load_the_database_driver():
    # The supervisor imports the app, and so forge, before forking its zygote,
    # and boots without psycopg (a third of a second); dispatch loads it.
    code = "import sys, forge, forge.supervisor.main; sys.exit('psycopg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_retry_policy_that_wedged_the_reporter_is_refused():
    # Its first failure asked PostgreSQL for now() + 100,000,000 weeks: "interval out of range", every flush.
    with pytest.raises(JobDefinitionError, match=r"Retry\(base\): '100000000w' is longer than the limit of 100 years"):
        forge.Retry(backoff="fixed", base="100000000w", max_backoff=None)


_OVER = "5300w"  # a little over 100 years


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": _OVER}, "timeout: '5300w' is longer than the limit of 100 years"),
        ({"heartbeat_timeout": _OVER}, "heartbeat_timeout: '5300w' is longer than the limit of 100 years"),
        ({"dead_letter_retain": 1e20}, "dead_letter_retain: 1e\\+20 is longer than the limit of 100 years"),
        ({"dead_letter_retain": timedelta.max}, "dead_letter_retain: .* is longer than the limit of 100 years"),
        ({"timeout": 10**400}, "timeout: expected a finite duration >= 0"),
        ({"name": "unit\x00nul"}, "name='unit\\\\x00nul': holds a NUL character"),
        ({"name": "unit\ud800"}, "name=.*: is not valid UTF-8"),
        ({"name": ""}, "name='': must be a non-empty string"),
        ({"name": 5}, "name=5: must be a non-empty string"),
        ({"worker_capability": "gpu\x00"}, "worker_capability=.*: holds a NUL character"),
        ({"resources": {"cpu": float("nan")}}, "resources.cpu=nan: must be a whole number >= 1"),
        ({"resources": {"cpu": float("inf")}}, "resources.cpu=inf: must be a whole number >= 1"),
        ({"resources": {"cpu": 0.5}}, "resources.cpu=0.5: must be a whole number >= 1"),
        ({"resources": {"cpu": 0}}, "resources.cpu=0: must be a whole number >= 1"),
        ({"resources": {"cpu": "four"}}, "resources.cpu='four': must be a whole number >= 1"),
        ({"resources": {"cpu": -1}}, "resources.cpu=-1: must be a whole number >= 1"),
        ({"resources": {"cpu": True}}, "resources.cpu=True: must be a whole number >= 1"),
        ({"resources": {"gpu": -1}}, "resources.gpu=-1: must be a whole number >= 0"),
        ({"resources": {"memory": 0}}, "resources.memory=0: must be more than zero bytes"),
    ],
)
def test_options_the_database_or_core_cannot_hold_are_refused_at_definition(options, message):
    try:
        with pytest.raises(JobDefinitionError, match=message):

            @forge.job(**{"name": "unit_unholdable", **options})
            def fn(ctx, input: In) -> None: ...

        assert "unit_unholdable" not in registry()
    finally:  # one accepted by mistake must not fail the next case as a duplicate
        registry().pop("unit_unholdable", None)


def test_resources_made_by_hand_are_checked_too():
    with pytest.raises(JobDefinitionError, match="resources.memory: expected a finite size >= 0, got -1"):
        forge.Resources(memory=-1)


def test_resources_made_by_hand_parse_a_memory_size():
    assert forge.Resources(cpu=4, memory="8Gi", gpu=1) == forge.Resources(cpu=4.0, memory=8 * 1024**3, gpu=1)
    assert forge.Resources(cpu="4", memory="256MiB", gpu="2") == forge.Resources(cpu=4, memory=256 * 2**20, gpu=2)
    assert forge.Resources(memory=1000).memory == 1000
    assert forge.Resources(cpu=4.0).cpu == 4 and isinstance(forge.Resources(cpu=4.0).cpu, int)
    with pytest.raises(JobDefinitionError, match="resources.memory: expected a size like"):
        forge.Resources(memory="lots")
    with pytest.raises(JobDefinitionError, match="resources.memory: expected a size like"):
        forge.Resources(memory=1.5)  # type: ignore[arg-type]


def test_durations_of_exactly_the_limit_are_accepted():
    @forge.job(name="unit_longest", timeout=LONGEST_DEFINED_DURATION, dead_letter_retain=LONGEST_DEFINED_DURATION,
               retry=forge.Retry(backoff="fixed", base=LONGEST_DEFINED_DURATION, max_backoff=None))
    def fn(ctx, input: In) -> None: ...

    assert fn.timeout == fn.dead_letter_retain == fn.retry.base == LONGEST_DEFINED_DURATION


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": _OVER}, r"Retry\(base\): '5300w' is longer than the limit"),
        ({"max_backoff": _OVER}, r"Retry\(max_backoff\): '5300w' is longer than the limit"),
        # 2^60 s: the core doubles the base at most 60 times, so after attempt 61 and every later one
        ({"max_attempts": 1000, "max_backoff": None}, "the delay after attempt 1000 would be 1.15292e\\+18s"),
        ({"max_attempts": 10**6, "backoff": "linear", "base": "1h", "max_backoff": None},
         "the delay after attempt 1000000 would be 3.6e\\+09s, over the limit of 3.15576e\\+09s"),
    ],
)
def test_retry_delays_past_the_limit_are_refused(kwargs, message):
    with pytest.raises(JobDefinitionError, match=message):
        forge.Retry(**kwargs)


def test_uncapped_delays_within_the_limit_are_accepted():
    assert forge.Retry(max_attempts=20, max_backoff=None).base == 1.0  # the last delay: 2^19 s, six days
    assert forge.Retry(max_attempts=1000, max_backoff="1h").max_backoff == 3600.0  # capped, whatever the count
