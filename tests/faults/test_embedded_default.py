"""Fault scenario: two supervisors share one embedded default (no [database] url) in one config folder; each is
stopped and restarted in turn, and the postmaster is SIGKILLed, under load. The cluster must stay up on its port
(restarted by the supervisors when killed), and the ledger must find every job completed, none run twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from forge.db.embedded import EmbeddedPostgres
from forge.db.migrate import migrate

from ..supervisors import embedded_folder
from . import ledger
from .conftest import Results
from .harness import Node, record, wait_for
from .scenarios import enqueue, final_check, unfinished, wait_finished

#: A lease that outlasts the postmaster's restart (about 1-3 s): no node fences, so no job runs again.
LEASE = {"heartbeat_interval": "1s", "heartbeat_timeout": "15s"}


@pytest.fixture
def folder() -> Iterator[Path]:
    """The nodes' config folder (a short /tmp one); its cluster is stopped before it is removed."""
    with embedded_folder("forge-fault-emb-") as path:
        yield path


@pytest.fixture
def nodes(folder: Path) -> Iterator[list[Node]]:
    """Nodes a and b on `folder`'s forge.toml (no url: the embedded default), each with its own log; killed at
    the end, before `folder` stops the cluster. The test starts the cluster first (as `forge db start` does),
    to install the ledger in it and give the jobs its URL."""
    url = EmbeddedPostgres(folder / ".forge" / "postgres").start()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        ledger.install(conn)
    made = [Node(name, folder, None, url, workers=2, **LEASE) for name in ("a", "b")]  # type: ignore[arg-type]
    for node in made:
        node.log_path = folder / f"{node.name}.log"  # the folder, and so forge.toml, is shared: the log is not
    try:
        yield made
    finally:
        for node in made:
            node.destroy()


@pytest.mark.timeout(240)
def test_two_supervisors_share_one_embedded_default(folder: Path, nodes: list[Node], results: Results) -> None:
    cluster = EmbeddedPostgres(folder / ".forge" / "postgres")
    url = cluster.url
    assert url is not None
    a, b = nodes
    ids = enqueue(url, 600, ms=(2, 12))
    a.start()
    b.start()
    downtimes: dict[str, float] = {}

    def postmaster() -> int | None:
        try:
            return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a new postmaster is writing it
            return None

    def accepts() -> bool:
        try:
            psycopg.connect(url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def kill_postmaster() -> None:
        killed = postmaster()
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: postmaster() not in (None, killed) and accepts(), 30,
                 "the supervisors to restart the killed postmaster on its port")

    def restart(node: Node) -> None:
        assert node.stop() == 0, f"{node.name} did not stop cleanly:\n{node.log_tail()}"
        assert cluster.url == url and accepts(), f"{node.name}'s stop took the cluster down"
        node.start()

    plan = [("restart_a", lambda: restart(a)), ("kill_postmaster", kill_postmaster), ("restart_b", lambda: restart(b))]
    for what, action in plan:
        time.sleep(1.5)
        if unfinished(url, ids) < 200:
            ids += enqueue(url, 300, ms=(2, 12))  # keep work flowing through every fault
        began = time.monotonic()
        action()
        downtimes[what] = round(time.monotonic() - began, 2)
        record(url, what, detail=f"{downtimes[what]}s")
    wait_finished(url, nodes, 120, ids)
    codes = {n.name: n.stop() for n in nodes}
    report = final_check(url, "embedded_default")
    results.write("embedded_default", {"jobs": len(ids), "action_seconds": downtimes, "exit_codes": codes,
                                       **report.figures})
    assert all(code == 0 for code in codes.values()), f"a node did not stop cleanly: {codes}"
    assert cluster.url == url, "the cluster is not running on its port after the nodes stopped"
    assert report.ok, report.text
