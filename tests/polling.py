"""Waiting on real processes and a real database: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition", every: float = 0.02) -> Any:
    """Poll `predicate` every `every` s until truthy and return its value.

    Raises AssertionError naming `what` after `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
