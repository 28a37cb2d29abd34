"""Parsing of human-written durations and sizes ("30s", "512MiB").

Both parsers take the name of what is being parsed (`what`, e.g. a config key
path) so that the ValueError they raise says where the bad value came from.
"""

from __future__ import annotations

import datetime
import math
import re

__all__ = ["LONGEST_DEFINED_DURATION", "UnitError", "parse_duration", "parse_size"]

#: The longest duration a job definition accepts (timeouts, retry delays, retention), in seconds: 100 years.
#: Each ends up in PostgreSQL as an interval added to now() (microseconds in 64 bits: about 292,000 years) and in
#: the Rust core as float milliseconds; 100 years leaves them ample room, a retry delay's jitter included.
LONGEST_DEFINED_DURATION = 100 * 365.25 * 86400.0

# Seconds per duration unit; the unit is required on strings except "0".
_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

# Bytes per size unit, keyed lower-case: SI (k, M, G, T: powers of 1000) and
# binary (Ki, Mi, Gi, Ti: powers of 1024), each with an optional trailing "B".
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}

_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A value that is not a valid duration or size; str() is "<what>: <detail>"."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


def _fail(what: str, value: object, expected: str) -> UnitError:
    return UnitError(what, f"expected a {expected}, got {value!r}")


def _check_number(value: float, what: str, original: object, noun: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise UnitError(what, f"expected a finite {noun} >= 0, got {original!r}")
    return value


def parse_duration(value: object, *, what: str, at_most: float | None = None) -> float:
    """Return `value` as float seconds.

    Accepts "250ms", "30s", "5m", "2h", "7d", "1w" (one number, one unit;
    "1.5h" is fine), a bare int/float of seconds, or a datetime.timedelta.
    Negative, non-finite, boolean and unparseable values, and values over
    `at_most` seconds if given, raise ValueError naming `what` and the value
    (a UnitError, whose .detail omits `what`).
    """
    seconds = _seconds(value, what)
    if at_most is not None and seconds > at_most:
        raise UnitError(what, f"{value!r} is longer than the limit of {_in_words(at_most)}")
    return seconds


def _seconds(value: object, what: str) -> float:
    expected = "duration like '30s', '5m', '250ms' or a number of seconds"
    if isinstance(value, bool):
        raise _fail(what, value, expected)
    if isinstance(value, datetime.timedelta):
        return _check_number(value.total_seconds(), what, value, "duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int past the largest float: refused below as not finite
            seconds = math.inf
        return _check_number(seconds, what, value, "duration")
    if not isinstance(value, str):
        raise _fail(what, value, expected)
    match = _NUMBER_UNIT.match(value)
    if match is None:
        raise _fail(what, value, expected)
    number, unit = float(match.group(1)), match.group(2)
    if unit == "" and number == 0:
        return 0.0
    factor = _DURATION_UNITS.get(unit)
    if factor is None:
        raise _fail(what, value, expected)
    return _check_number(number * factor, what, value, "duration")


def _in_words(seconds: float) -> str:
    years = seconds / (365.25 * 86400)
    return f"{years:g} years ({seconds:g}s)" if years >= 1 else f"{seconds:g}s"


def parse_size(value: object, *, what: str) -> int:
    """Return `value` as int bytes.

    Accepts "512MiB", "8Gi", "1GB", "100M", "64k" (SI units are powers of
    1000, "i" units powers of 1024, a trailing "B" optional, case-insensitive)
    or a bare int of bytes. Fractions round down to whole bytes ("1.5GiB").
    Negative, boolean, float-typed and unparseable values raise ValueError.
    """
    expected = "size like '512MiB', '8Gi', '1GB' or a number of bytes"
    if isinstance(value, bool):
        raise _fail(what, value, expected)
    if isinstance(value, int):
        return int(_check_number(value, what, value, "size"))
    if not isinstance(value, str):
        raise _fail(what, value, expected)
    match = _NUMBER_UNIT.match(value)
    if match is None:
        raise _fail(what, value, expected)
    factor = _SIZE_UNITS.get(match.group(2).lower())
    if factor is None:
        raise _fail(what, value, expected)
    number = match.group(1)
    if "." in number:
        return int(float(number) * factor)
    return int(number) * factor
