"""A pids cgroup (v1, writable: the tests run as root) to hold a process under a real process-count limit, for
the tests of a fork the kernel refuses; skipped where there is none."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@contextlib.contextmanager
def pids_cgroup() -> Iterator[Path]:
    """A new pids cgroup (write pids.max, and pids to cgroup.procs); its members go back to the root after."""
    if not os.access(PIDS_CGROUP / "cgroup.procs", os.W_OK):
        pytest.skip("no writable pids cgroup to limit the zygote's forks with")
    group = PIDS_CGROUP / f"forge-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # back to the root, so the group can go
            try:
                (PIDS_CGROUP / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # it exited meanwhile
        group.rmdir()
