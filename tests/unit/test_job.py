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

    assert fn.resources.to_json() == {"cpu": 4.0, "memory": 8 * 1024**3, "gpu": 1}


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
