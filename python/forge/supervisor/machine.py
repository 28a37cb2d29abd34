"""What this machine gives the node: its capacity for jobs' resources ([node] cpus and memory, detected when
omitted) and the memory cgroup that jobs' memory limits are enforced in (confine.py).

The memory cgroup: cgroup v1, a group `forge-<supervisor pid>` made under the supervisor's own memory cgroup
(so the node stays within whatever limits its own group), when that hierarchy is mounted and writable (as
root, or delegated); each attempt with a memory limit gets a child the worker makes and joins
(confine.py). cgroup v2 is not used: a v2 group with children may hold no process, so the node would have to
move itself into a leaf of a delegated subtree first; without a v1 memory cgroup jobs get RLIMIT_AS instead.
The supervisor removes its group, and whatever attempts' groups are left, at its stop; so does its zygote once
it killed every worker (a supervisor that was SIGKILLed), and a supervisor that starts removes the groups of
supervisors that are gone (both were killed).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from .._core import ClaimedJob
from ..config import NodeConfig
from .capacity import Capacity, Grant
from .confine import job_cgroup

_log = logging.getLogger("forge.supervisor")

CGROUP_ROOT = Path("/sys/fs/cgroup")


def capacity(node: NodeConfig) -> Capacity:
    """The node's capacity: [node] cpus, memory and gpus, each detected from the machine when omitted."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    cpus = node.cpus if node.cpus is not None else detect_cpus(cores)
    memory = node.memory if node.memory is not None else detect_memory()
    return Capacity(cpus, memory, tuple(node.gpus), cores)


def detect_cpus(cores: tuple[int, ...]) -> int:
    """The CPUs this process may use: its affinity, fewer if its cgroup's CPU quota allows less (rounded up)."""
    quota = _cpu_quota()
    return max(1, min(len(cores), math.ceil(quota))) if quota is not None else len(cores)


def _cpu_quota() -> float | None:
    """The cgroup's CPU bandwidth limit in CPUs (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us), if any."""
    v2 = own_cgroup("")
    if v2 is not None and (text := _read(v2 / "cpu.max")) is not None:
        quota, _, period = text.partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    v1 = own_cgroup("cpu")
    if v1 is None:
        return None
    v1_quota, v1_period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
    if not v1_quota or not v1_period or int(v1_quota) < 0:
        return None
    return int(v1_quota) / int(v1_period)


def detect_memory() -> int:
    """The machine's memory (MemTotal), or its cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes) if lower."""
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    for group, name in ((own_cgroup(""), "memory.max"), (own_cgroup("memory"), "memory.limit_in_bytes")):
        text = _read(group / name) if group is not None else None
        if text is not None and text.isdigit():
            total = min(total, int(text))
    return total


def own_cgroup(controller: str) -> Path | None:
    """The folder of this process's cgroup of v1 `controller` ("": the v2 one), where it is mounted as usual."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") if controller else controllers == "":
            mount = CGROUP_ROOT / controller if controller else _v2_mount()
            return None if mount is None else mount / path.lstrip("/")
    return None


def _v2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, *_ = line.split()
        if kind == "cgroup2":
            return Path(where)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class MemoryCgroups:
    """The node's v1 memory cgroup (None where it cannot make one), and what it finds of its jobs' groups."""

    def __init__(self, base: Path | None) -> None:
        self.base = base

    @classmethod
    def make(cls) -> MemoryCgroups:
        """Make the node's group under the supervisor's own memory cgroup, if the machine lets it."""
        own = own_cgroup("memory")
        if own is None or not os.access(own / "cgroup.procs", os.W_OK):
            _log.info("memory limits of jobs: RLIMIT_AS (no writable cgroup v1 memory controller)")
            return cls(None)
        for stale in own.glob("forge-*"):
            if stale.name.removeprefix("forge-").isdigit() and not _alive(int(stale.name.removeprefix("forge-"))):
                cls(stale).remove()
        base = own / f"forge-{os.getpid()}"
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            _log.warning("memory limits of jobs: RLIMIT_AS (cannot make the memory cgroup %s: %s)", base, exc)
            return cls(None)
        _log.info("memory limits of jobs: memory cgroups under %s", base)
        return cls(base)

    def killed(self, job: ClaimedJob, grant: Grant | None) -> str | None:
        """Why the worker running `job` (given `grant`) ended, as far as its memory cgroup knows: "oom" if the
        kernel's OOM killer killed a process of the attempt's group, else None. The group goes if it can."""
        if self.base is None or grant is None or not grant.memory:
            return None
        group = job_cgroup(str(self.base), job.id, job.attempt)
        control = _read(group / "memory.oom_control") or ""
        killed = any(line.split() and line.split()[0] == "oom_kill" and line.split()[1] != "0"
                     for line in control.splitlines())
        _remove(group, quiet=True)  # what the worker left may still be dying: remove() tries again at the stop
        return "oom" if killed else None

    def remove(self) -> None:
        """At the stop, once the workers are gone: remove the attempts' groups left, then the node's."""
        if self.base is None:
            return
        for group in self.base.glob("job-*"):
            _remove(group)
        _remove(self.base)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove(group: Path, *, quiet: bool = False) -> None:
    try:
        group.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a process still in it: left for the operator (it can go once the process does)
        if not quiet:
            _log.warning("cannot remove the memory cgroup %s: %s", group, exc)
