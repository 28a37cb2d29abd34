"""Retry policies: how many attempts a job gets, how long to wait, which errors count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import JobDefinitionError
from .units import LONGEST_DEFINED_DURATION, parse_duration

#: The Rust core doubles an exponential delay at most this many times (rust/src/backoff.rs, MAX_EXPONENT).
_MAX_DOUBLINGS = 60

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
    core when a failure is recorded. base, max_backoff and the longest delay
    the policy computes (after attempt max_attempts, before jitter) may be at
    most LONGEST_DEFINED_DURATION (100 years).
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
        self._check_longest_delay()

    def _check_longest_delay(self) -> None:
        """The core computes a delay for every failure, the last attempt's too; a delay PostgreSQL cannot add
        to now() would make that report fail for good, so it is refused here."""
        n = self.max_attempts
        growth = {"exponential": 2.0 ** min(n - 1, _MAX_DOUBLINGS), "linear": float(n), "fixed": 1.0}[self.backoff]
        longest = self.base * growth
        if self.max_backoff is not None:
            longest = min(longest, self.max_backoff)
        if longest > LONGEST_DEFINED_DURATION:
            raise JobDefinitionError(
                f"Retry(max_attempts={n}, backoff={self.backoff!r}, base={self.base:g}s, max_backoff=None): "
                f"the delay after attempt {n} would be {longest:g}s, over the limit of "
                f"{LONGEST_DEFINED_DURATION:g}s (100 years): set max_backoff, or fewer attempts"
            )

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
        return parse_duration(value, what=f"Retry({what})", at_most=LONGEST_DEFINED_DURATION)
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
