"""forge.db.embedded: a real cluster started, found by other processes, and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from forge.db.embedded import EmbeddedPostgres
from forge.errors import DatabaseError


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short /tmp folder; any cluster left in it is stopped before it is removed."""
    path = Path(tempfile.mkdtemp(prefix="forge-emb-"))
    try:
        yield path
    finally:
        EmbeddedPostgres(path / "pg").stop()
        shutil.rmtree(path, ignore_errors=True)


def postmaster_pid(cluster: EmbeddedPostgres) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])


def start_in_other_process(data_dir: str) -> str:
    return EmbeddedPostgres(data_dir, durable=False).start()


def test_start_connect_stop(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    assert not cluster.running() and cluster.url is None

    url = cluster.start()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert cluster.running() and cluster.url == url
    assert cluster.url_file.read_text().strip() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)

    cluster.stop()
    assert not cluster.running() and cluster.url is None
    assert not cluster.url_file.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_second_start_reuses_the_running_cluster(folder):
    first = EmbeddedPostgres(folder / "pg", durable=False)
    url = first.start()
    pid = postmaster_pid(first)

    second = EmbeddedPostgres(folder / "pg", durable=False)
    assert second.start() == url
    assert postmaster_pid(second) == pid

    # Another process (the forge CLI, a dispatch script) finds it by the URL file.
    code = "import sys; from forge.db.embedded import EmbeddedPostgres as E; print(E(sys.argv[1]).url)"
    found = subprocess.run(
        [sys.executable, "-c", code, str(folder / "pg")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == url


def test_data_survives_a_restart(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    with psycopg.connect(cluster.start(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    cluster.stop()
    with psycopg.connect(cluster.start()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == (7,)


def test_concurrent_first_starts_share_one_cluster(folder):
    data_dir = str(folder / "pg")
    with ProcessPoolExecutor(max_workers=3) as pool:
        urls = list(pool.map(start_in_other_process, [data_dir] * 3))
    assert len(set(urls)) == 1
    with psycopg.connect(urls[0]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_restarted_cluster_keeps_its_port(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    url = cluster.start()
    cluster.stop()
    assert cluster.start() == url, "the restarted cluster took another port: its clients lost it"


def test_a_start_names_its_port_when_another_program_took_it(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    port = urlsplit(cluster.start()).port
    cluster.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(DatabaseError, match=f"port {port} .* is in use by another program"):
            cluster.start()
    assert not cluster.running()


def test_stop_refuses_while_the_cluster_is_used(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    url = cluster.start()
    with cluster.used(), EmbeddedPostgres(folder / "pg").used():  # users share the cluster
        with pytest.raises(DatabaseError, match="in use"):
            cluster.stop()
        assert cluster.url == url
    cluster.stop()
    assert not cluster.running()


def test_a_stop_just_after_the_postmaster_died_finds_it_stopped(folder):
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    cluster.start()
    os.kill(postmaster_pid(cluster), signal.SIGKILL)
    cluster.stop()  # pg_ctl stop finds the postmaster gone and its pid file left: "server does not shut down"
    assert not cluster.running() and not cluster.url_file.exists()
