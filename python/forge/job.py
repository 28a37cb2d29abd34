"""Job definitions: the @forge.job decorator and the registry of job types.

A worker runs only job types registered here, looked up by the name stored in
the row; nothing is ever imported by name from the database.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import msgspec

from .errors import DispatchError, JobDefinitionError
from .keys import key_function
from .retry import Retry
from .units import LONGEST_DEFINED_DURATION, parse_duration, parse_size

#: Claim order: a lower number is claimed first.
PRIORITIES: dict[str, int] = {"critical": 0, "high": 1, "normal": 2, "low": 3}

DEFAULT_PRIORITY = "normal"
#: Jobs run at most this long unless they say otherwise (timeout=None: no limit).
DEFAULT_TIMEOUT = 30 * 60.0
DEFAULT_CAPABILITY = "general"

_UNSET: Any = object()

R = TypeVar("R")


@dataclass(frozen=True, init=False)
class Resources:
    """What one run of a job needs from its node: whole CPUs (cores its worker is pinned to), bytes of memory (or a
    size such as "8Gi", "256MiB": the limit its worker's process tree runs under) and GPUs (devices it is given in
    CUDA_VISIBLE_DEVICES). Whole CPUs: a job is pinned to the cores it is given, and a core is not shared."""

    cpu: int | None
    memory: int | None
    gpu: int | None

    def __init__(self, cpu: int | str | None = None, memory: int | str | None = None,
                 gpu: int | str | None = None) -> None:
        object.__setattr__(self, "cpu", _whole(cpu, "cpu", 1))
        object.__setattr__(self, "memory", _memory(memory))
        object.__setattr__(self, "gpu", _whole(gpu, "gpu", 0))

    def to_json(self) -> dict[str, float | int]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory), ("gpu", self.gpu)) if v is not None}


class Job(Generic[R]):
    """A registered job type. Call it like the function to run it in-process (tests)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        input_type: Any,
        retry: Retry,
        timeout: float | None,
        priority: str,
        capability: str,
        resources: Resources | None,
        heartbeat_timeout: float | None,
        dead_letter_after: float | None,
        dead_letter_retain: float | None,
        complete_in_transaction: bool = False,
        idempotent: Callable[[Any], Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.input_type = input_type
        self.is_async = inspect.iscoroutinefunction(fn)
        self.retry = retry
        self.timeout = timeout
        self.priority = priority
        self.priority_rank = PRIORITIES[priority]
        self.capability = capability
        self.resources = resources
        self.heartbeat_timeout = heartbeat_timeout
        self.dead_letter_after = dead_letter_after
        self.dead_letter_retain = dead_letter_retain
        self.complete_in_transaction = complete_in_transaction
        self.idempotent = idempotent  # input -> its idempotency key, or None: no key
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__

    def __call__(self, ctx: Any, input: Any) -> Any:
        return self.fn(ctx, input)

    def __repr__(self) -> str:
        return f"<forge.Job {self.name}>"


_registry: dict[str, Job[Any]] = {}


def registry() -> dict[str, Job[Any]]:
    """The job types this process knows, by name (read-only use, please)."""
    return _registry


def job(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retry: Retry | None = None,
    timeout: Any = _UNSET,
    priority: str = DEFAULT_PRIORITY,
    worker_capability: str = DEFAULT_CAPABILITY,
    resources: Resources | dict[str, Any] | None = None,
    heartbeat_timeout: Any = None,
    dead_letter_after: Any = None,
    dead_letter_retain: Any = None,
    complete_in_transaction: bool = False,
    idempotent: str | Callable[[Any], Any] | None = None,
) -> Any:
    """Register a function `fn(ctx, input)` as a job type.

    The job type's name is the function's name unless `name` is given. The
    input type is the annotation of the second parameter (any type msgspec
    can decode; unannotated means any JSON). Timeouts and durations take
    "30s"/"5m"/"7d", seconds or a timedelta. Usable as @job or @job(...).
    complete_in_transaction: the whole body runs in one transaction on
    ctx.db, and the job's completion is written in it just before it commits
    (forge/completion.py: exactly-once database effects).
    idempotent: the job's idempotency key, a dotted path into the input
    ("input.payment_id") or a function of the input; a dispatch whose key a
    job of this type still holds inserts nothing and returns that job's id.
    """

    def register(func: Callable[..., Any]) -> Job[Any]:
        input_type = _input_type(func)
        definition: Job[Any] = Job(
            func,
            name=_text_option(func.__name__ if name is None else name, "name"),
            input_type=input_type,
            retry=retry if retry is not None else Retry(),
            timeout=_timeout(timeout),
            priority=_priority(priority),
            capability=_capability(worker_capability),
            resources=_resources(resources),
            heartbeat_timeout=_optional_duration(heartbeat_timeout, "heartbeat_timeout"),
            dead_letter_after=_optional_duration(dead_letter_after, "dead_letter_after", zero_ok=True),
            dead_letter_retain=_optional_duration(dead_letter_retain, "dead_letter_retain"),
            complete_in_transaction=_flag(complete_in_transaction, "complete_in_transaction"),
            idempotent=key_function(idempotent, input_type),
        )
        if not isinstance(definition.retry, Retry):
            raise JobDefinitionError(f"job {definition.name!r}: retry= must be a forge.Retry")
        existing = _registry.get(definition.name)
        if existing is not None:
            raise JobDefinitionError(
                f"two jobs are named {definition.name!r}: {_where(existing.fn)} and {_where(func)}; "
                "give one of them name=..."
            )
        _registry[definition.name] = definition
        return definition

    return register(fn) if fn is not None else register


def convert_input(definition: Job[Any], value: Any) -> Any:
    """`value` checked against the job's input type (dicts become Structs, etc.)."""
    declared = definition.input_type
    if declared is Any:
        return value
    if isinstance(declared, type) and isinstance(value, declared):
        return value
    try:
        return msgspec.convert(value, declared, from_attributes=True)
    except (msgspec.ValidationError, RecursionError) as exc:  # RecursionError: nested deeper than msgspec goes
        raise DispatchError(
            f"input for job {definition.name!r} does not match {_type_name(declared)}: {exc}"
        ) from None


def _input_type(func: Callable[..., Any]) -> Any:
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 2:
        raise JobDefinitionError(f"job function {_where(func)} must take exactly (ctx, input)")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # unresolvable forward reference: say which function
        raise JobDefinitionError(f"cannot resolve the annotations of {_where(func)}: {exc}") from None
    return hints.get(params[1].name, Any)


def _timeout(value: Any) -> float | None:
    if value is _UNSET:
        return DEFAULT_TIMEOUT
    return _optional_duration(value, "timeout")


def _optional_duration(value: Any, what: str, *, zero_ok: bool = False) -> float | None:
    """None, or the duration in seconds: > 0, or >= 0 where zero means "at once" (dead_letter_after)."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value, what=what, at_most=LONGEST_DEFINED_DURATION)
    except ValueError as exc:
        raise JobDefinitionError(str(exc)) from None
    if seconds == 0 and not zero_ok:
        raise JobDefinitionError(f"{what}={value!r}: must be longer than zero")
    return seconds


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise JobDefinitionError(f"{what}={value!r}: must be True or False")
    return value


def _priority(value: str) -> str:
    if value not in PRIORITIES:
        raise JobDefinitionError(f"priority={value!r}: must be one of {', '.join(PRIORITIES)}")
    return value


def _capability(value: str) -> str:
    return _text_option(value, "worker_capability")


def _text_option(value: object, what: str) -> str:
    """A name stored in a text column and read by the Rust core: PostgreSQL's text holds no NUL character, and
    neither the database nor Rust holds a lone surrogate (it is not UTF-8)."""
    if not isinstance(value, str) or not value:
        raise JobDefinitionError(f"{what}={value!r}: must be a non-empty string")
    if "\x00" in value:
        raise JobDefinitionError(f"{what}={value!r}: holds a NUL character, which PostgreSQL cannot store")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise JobDefinitionError(f"{what}={value!r}: is not valid UTF-8 text ({exc.reason})") from None
    return value


def _resources(value: Resources | dict[str, Any] | None) -> Resources | None:
    if value is None or isinstance(value, Resources):
        return value
    unknown = set(value) - {"cpu", "memory", "gpu"}
    if unknown:
        raise JobDefinitionError(f"resources: unknown key(s) {sorted(unknown)}; use cpu, memory, gpu")
    return Resources(cpu=value.get("cpu"), memory=value.get("memory"), gpu=value.get("gpu"))


def _whole(value: object, what: str, least: int) -> int | None:
    """A count of CPUs or GPUs: an int, a whole float (4.0) or digits ("4"), at least `least`."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() or isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise JobDefinitionError(f"resources.{what}={value!r}: must be a whole number >= {least}")
    return value


def _memory(value: object) -> int | None:
    """Bytes, from a size ("8Gi", "256MiB", "1GB") or an int; more than zero."""
    if value is None:
        return None
    try:
        size = parse_size(value, what="resources.memory")
    except ValueError as exc:
        raise JobDefinitionError(str(exc)) from None
    if size == 0:
        raise JobDefinitionError(f"resources.memory={value!r}: must be more than zero bytes (omit it for no limit)")
    return size


def _where(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


__all__ = ["Job", "Resources", "job", "registry", "PRIORITIES"]
