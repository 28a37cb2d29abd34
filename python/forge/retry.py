"""Retry policies: how many attempts a job gets, how long to wait, which errors count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import JobDefinitionError
from .units import parse_duration

BACKOFFS = ("exponential", "linear", "fixed")

ErrorMatcher = Union[type, str]


@dataclass(frozen=True, init=False)
class Retry:
    """A job's retry policy.

    max_attempts counts every attempt, the first included (1 = never retry).
    backoff is "exponential" (base, 2*base, 4*base...), "linear" (base,
    2*base, 3*base...) or "fixed" (base each time); every delay is capped by
    max_backoff and then spread by +/- jitter (a fraction of the delay).
    on lists the errors that are retried, as exception classes (subclasses
    match) or class names (matched along the exception's class hierarchy);
    empty means every error is retried. The delays are computed by the Rust
    core when a failure is recorded.
    """

    max_attempts: int
    backoff: str
    base: float
    max_backoff: float | None
    jitter: float
    on: tuple[ErrorMatcher, ...]

    def __init__(
        self,
        max_attempts: int = 3,
        backoff: str = "exponential",
        *,
        base: object = 1.0,
        max_backoff: object = "1h",
        jitter: float = 0.0,
        on: object = (),
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise JobDefinitionError(f"Retry(max_attempts={max_attempts!r}): must be an integer >= 1")
        if backoff not in BACKOFFS:
            raise JobDefinitionError(f"Retry(backoff={backoff!r}): must be one of {', '.join(BACKOFFS)}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter <= 1.0:
            raise JobDefinitionError(f"Retry(jitter={jitter!r}): must be a fraction between 0 and 1")
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "backoff", backoff)
        object.__setattr__(self, "base", _duration(base, "base"))
        object.__setattr__(self, "max_backoff", None if max_backoff is None else _duration(max_backoff, "max_backoff"))
        object.__setattr__(self, "jitter", float(jitter))
        object.__setattr__(self, "on", _matchers(on))

    def retries(self, exc: BaseException) -> bool:
        """Whether `exc` is an error this policy retries (attempts aside)."""
        if not self.on:
            return True
        names = {cls.__name__ for cls in type(exc).__mro__} | {
            f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__
        }
        return any(
            (isinstance(m, str) and m in names) or (isinstance(m, type) and isinstance(exc, m))
            for m in self.on
        )


def _duration(value: object, what: str) -> float:
    try:
        return parse_duration(value, what=f"Retry({what})")
    except ValueError as exc:
        raise JobDefinitionError(str(exc)) from None


def _matchers(on: object) -> tuple[ErrorMatcher, ...]:
    # on is untyped on purpose (checked below); tuple() of a non-iterable raises TypeError.
    items = (on,) if isinstance(on, (str, type)) else tuple(on)  # type: ignore[arg-type]
    for item in items:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, type) and issubclass(item, BaseException):
            continue
        raise JobDefinitionError(f"Retry(on=...): {item!r} is neither an exception class nor a class name")
    return items
