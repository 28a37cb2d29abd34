"""The nemesis: seeded random faults against a set of nodes.

The seed is printed; FORGE_FAULT_SEED=<seed> replays the same choices (the
timing of the system under test still varies). Every fault is written to
ledger_faults with the database clock, and for kills every process that was
hit is watched until it is dead, its death recorded too ('died'), so the
invariant checker can bound the executions it cut.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import psycopg

from . import ledger
from .harness import Node, alive, watch_deaths

ACTIONS = ("kill_worker", "kill_supervisor", "kill_node", "pause")


def seed_from_env() -> int:
    value = os.environ.get("FORGE_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


class Nemesis:
    def __init__(self, nodes: list[Node], url: str, seed: int, *, weights: dict[str, float] | None = None,
                 pause_seconds: float = 1.0) -> None:
        self.nodes = nodes
        self.url = url
        self.seed = seed
        self.rng = random.Random(seed)
        self.weights = weights or {"kill_worker": 0.7, "kill_supervisor": 0.15, "kill_node": 0.15}
        self.pause_seconds = pause_seconds
        self.counts: Counter[str] = Counter()
        self.orphans: list[tuple[str, int, float]] = []  # processes that outlived a kill of their parent
        self.restart_seconds: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def kills(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("kill"))

    # -- one fault ------------------------------------------------------------------

    def strike(self, conn: psycopg.Connection[Any]) -> str | None:
        action = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        node = self.rng.choice(self.nodes)
        if not node.running():
            return None
        if action == "kill_worker":
            workers = node.workers()
            if not workers:
                return None
            pid = self.rng.choice(workers)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return None
            ledger.record_fault(conn, "kill_worker", pid=pid, sup_pid=node.pid)
        elif action == "kill_supervisor":
            sup = node.pid
            tree = node.tree()
            os.kill(sup, signal.SIGKILL)
            ledger.record_fault(conn, "kill_supervisor", pid=sup, sup_pid=sup)
            node.reap()
            self._watch(tree, sup, "supervisor")
            self._restart(node)
        elif action == "kill_node":
            sup = node.pid
            tree = node.kill_group()
            for pid in tree:
                ledger.record_fault(conn, "kill_node", pid=pid, sup_pid=sup)
            self._watch(tree, sup, "node")
            self._restart(node)
        elif action == "pause":
            sup = node.pid
            workers = node.workers()
            os.kill(sup, signal.SIGSTOP)
            ledger.record_fault(conn, "stop_supervisor", pid=sup, sup_pid=sup)
            # the zygote fences the workers of a frozen supervisor: record each death as it is seen, so the
            # checker knows their executions ended before another node rescued the jobs
            began = time.monotonic()
            watch_deaths(self.url, workers, sup, timeout=self.pause_seconds)
            time.sleep(max(0.0, self.pause_seconds - (time.monotonic() - began)))
            os.kill(sup, signal.SIGCONT)
            ledger.record_fault(conn, "cont_supervisor", pid=sup, sup_pid=sup)
        self.counts[action] += 1
        return action

    def _watch(self, pids: list[int], sup: int, what: str) -> None:
        seen = watch_deaths(self.url, pids, sup, timeout=3.0)
        for pid in pids:
            if pid not in seen and alive(pid):
                self.orphans.append((what, pid, 3.0))

    def _restart(self, node: Node) -> None:
        began = time.monotonic()
        node.start()
        self.restart_seconds.append(time.monotonic() - began)

    # -- a background run ----------------------------------------------------------

    def run_in_background(self, faults: int, interval: float) -> None:
        """Deliver `faults` faults, one every `interval` seconds (plus restart time), until stop()."""

        def loop() -> None:
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    delivered = 0
                    while delivered < faults and not self._stop.wait(self.rng.uniform(0.5, 1.5) * interval):
                        if self.strike(conn) is not None:
                            delivered += 1
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self._thread = threading.Thread(target=loop, name="nemesis", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
        if self.error is not None:
            raise AssertionError(f"the nemesis failed: {self.error!r}") from self.error
