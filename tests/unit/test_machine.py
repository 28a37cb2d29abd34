"""The node's capacity from [node] and the machine (supervisor/machine.py)."""

from __future__ import annotations

import os
from pathlib import Path

from forge.config import NodeConfig
from forge.supervisor import machine


def test_configured_capacity_is_taken_as_it_is():
    capacity = machine.capacity(NodeConfig(cpus=16, memory=2**30, gpus=["0", "1"]))
    assert (capacity.cpus, capacity.memory, capacity.gpus) == (16, 2**30, ("0", "1"))
    assert capacity.cores == tuple(sorted(os.sched_getaffinity(0)))  # the CPU ids the positions map to


def test_omitted_capacity_is_what_this_process_may_use():
    capacity = machine.capacity(NodeConfig())
    assert 1 <= capacity.cpus <= len(os.sched_getaffinity(0))
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert 0 < capacity.memory <= total
    assert capacity.gpus == ()  # none unless listed


def test_a_cpu_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(machine, "_cpu_quota", lambda: 1.5)
    assert machine.detect_cpus((0, 1, 2, 3)) == 2  # rounded up
    monkeypatch.setattr(machine, "_cpu_quota", lambda: None)
    assert machine.detect_cpus((0, 1, 2, 3)) == 4
