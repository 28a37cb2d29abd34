"""Fixtures of the fault-injection suite (see tests/faults/README.md... the module docstrings).

    --run-slow / FORGE_RUN_SLOW=1   also run the long tier (tests marked `slow`)
    FORGE_FAULT_SEED=<n>            replay the nemesis's choices

    fault_cluster  (session)  this suite's own PostgreSQL (fsync off), restartable, same port after restarts
    fault_db       (function) a fresh migrated database with the ledger installed; its URL
    make_node      (function) factory: make_node("a", proxy=None, **node_settings) -> harness.Node (not started)
    make_proxy     (function) factory: a proxy.Proxy to the cluster, started
    results        (session)  a writer of JSON lines to a temp file whose path is printed
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from forge.db.embedded import create_database, drop_database
from forge.db.migrate import migrate

from . import ledger
from .harness import FaultCluster, Node
from .proxy import Proxy


def _run_slow(config: pytest.Config) -> bool:
    try:
        flag = bool(config.getoption("--run-slow"))
    except ValueError:
        flag = False
    return flag or os.environ.get("FORGE_RUN_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _run_slow(config):
        return
    skip = pytest.mark.skip(reason="long tier: run with --run-slow (or FORGE_RUN_SLOW=1)")
    here = Path(__file__).parent
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fault_cluster() -> Iterator[FaultCluster]:
    folder = Path(tempfile.mkdtemp(prefix="forge-faults-"))
    # fsync off is safe here (the OS does not crash), but synchronous_commit must stay on: with it off,
    # `pg_ctl stop -m immediate` loses the last commits (jobs the test enqueued, ledger rows), which the
    # checker would report as lost jobs that the engine never saw.
    cluster = FaultCluster(folder / "pg", durable=False,
                           settings={"max_connections": "300", "synchronous_commit": "on"})
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fault_db(fault_cluster: FaultCluster) -> Iterator[str]:
    if not fault_cluster.running():  # a scenario that failed while PostgreSQL was down
        fault_cluster.start()
    admin = fault_cluster.url
    assert admin is not None
    name = f"forge_fault_{uuid.uuid4().hex[:10]}"
    url = create_database(admin, name)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        ledger.install(conn)
    try:
        yield url
    finally:
        if not fault_cluster.running():
            fault_cluster.start()
        drop_database(fault_cluster.url or admin, name)


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytest.fixture
def make_proxy(fault_db: str) -> Iterator[Callable[[], Proxy]]:
    made: list[Proxy] = []

    def make() -> Proxy:
        parts = urlsplit(fault_db)
        proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def make_node(fault_db: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(name: str, proxy: Proxy | None = None, **settings: Any) -> Node:
        url = fault_db if proxy is None else with_port(fault_db, proxy.port)
        node = Node(name, tmp_path / name, url, fault_db, **settings)
        made.append(node)
        return node

    yield make
    for node in made:
        node.destroy()


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, scenario: str, figures: dict[str, Any]) -> None:
        line = {"scenario": scenario, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
        print(f"\n[{scenario}] figures: {json.dumps(figures, default=str)}\n[{scenario}] appended to {self.path}")


@pytest.fixture(scope="session")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    path = tmp_path_factory.mktemp("fault-results") / "results.jsonl"
    print(f"\nfault-injection figures go to {path}")
    return Results(path)
