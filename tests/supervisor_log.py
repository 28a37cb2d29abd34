"""Reading a supervisor's log: the core's totals it logs when it stops."""

from __future__ import annotations

import re


def core_totals(log: str) -> list[dict[str, int]]:
    """The `core totals: k=v ...` line of every run in `log` that stopped cleanly, oldest first."""
    return [
        {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
        for match in re.finditer(r"core totals: ([^\n]*)", log)
    ]
