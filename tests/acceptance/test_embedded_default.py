"""The embedded default: with no [database] url, forge-supervisor starts (or joins) the PostgreSQL under its
config folder's .forge/ and runs jobs on it. The cluster outlives whoever started it: supervisors and
`forge migrate` leave it running, a supervisor restarts it on its port if it dies, and only `forge db stop`
stops it, which it refuses while a supervisor uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from testapp import jobs

import forge
from forge.cli.main import cli
from forge.db.embedded import EmbeddedPostgres

from ..supervisors import START_TIMEOUT, Supervisor, alive, embedded_folder
from .conftest import APPS, DEFAULT_NODE, EVENTS_TABLE, completed, wait_for

FORGE = str(Path(sys.executable).with_name("forge"))
NO_URL = {"FORGE_DATABASE_URL": None}  # the embedded default, whatever the test run's environment says


@pytest.fixture
def folder() -> Iterator[Path]:
    """The supervisors' config folder, a short /tmp one; the cluster is stopped before the folder is removed."""
    with embedded_folder("forge-default-") as path:
        yield path


@pytest.fixture
def nodes(folder: Path) -> Iterator[Callable[[str], Supervisor]]:
    """Factory: nodes(name) is a supervisor (not started) on `folder`'s forge.toml, with a log of its own; every
    one still running is killed at the end, before `folder` stops the cluster."""
    made: list[Supervisor] = []

    def make(name: str) -> Supervisor:
        sup = Supervisor(folder, None, modules=["testapp.jobs"], node={**DEFAULT_NODE, "workers": 1},
                         app_path=APPS, name=name)
        sup.log_path = folder / f"{name}.log"  # the folder, and so forge.toml, is shared: the log is not
        made.append(sup)
        return sup

    yield make
    for sup in made:
        if sup.running():
            sup.stop(signal.SIGKILL)


@pytest.fixture
def cluster(folder: Path) -> EmbeddedPostgres:
    return EmbeddedPostgres(folder / ".forge" / "postgres")


def test_without_a_database_url_the_supervisor_runs_its_own_postgresql(cluster, nodes):
    sup = nodes("only")
    assert "[database]" not in sup.config.read_text()
    url = _start(sup, cluster)
    postmaster = postmaster_pid(cluster)
    _run_jobs(url, 1, "a job on the embedded cluster")
    assert f"database: embedded PostgreSQL at {cluster.data_dir}, {url}\n" in sup.log()  # logged at the start
    printed = CliRunner().invoke(cli, ["db", "url", "-c", str(sup.config)], env=NO_URL)
    assert (printed.exit_code, printed.stdout) == (0, url + "\n"), printed.output

    refused = CliRunner().invoke(cli, ["db", "stop", "-c", str(sup.config)], env=NO_URL)
    assert refused.exit_code == 1, refused.output
    assert "in use" in refused.stderr and cluster.url == url, "forge db stop stopped the cluster a supervisor uses"

    assert sup.stop() == 0
    assert cluster.url == url and alive(postmaster), "the supervisor's stop stopped the cluster"
    stopped = CliRunner().invoke(cli, ["db", "stop", "-c", str(sup.config)], env=NO_URL)
    assert stopped.exit_code == 0, stopped.output
    assert not cluster.running() and not cluster.url_file.exists()
    assert not alive(postmaster)


def test_a_supervisor_that_stops_leaves_the_cluster_to_the_other(cluster, nodes):
    first, second = nodes("first"), nodes("second")
    url = _start(first, cluster)
    postmaster = postmaster_pid(cluster)
    second.direct_url = url
    second.start()

    assert first.stop() == 0
    assert cluster.url == url and postmaster_pid(cluster) == postmaster, (
        f"the first supervisor's stop stopped the cluster the second uses (now at {cluster.url})"
    )
    _run_jobs(url, 4, "the second supervisor to run jobs dispatched after the first stopped")
    assert second.running()


def test_two_supervisors_and_migrate_started_together_on_a_fresh_folder(cluster, nodes):
    first, second = nodes("first"), nodes("second")
    first.start(wait=False)
    second.start(wait=False)
    migrate = subprocess.run([FORGE, "migrate", "-c", str(first.config)], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "FORGE_DATABASE_URL"}, timeout=120)
    assert migrate.returncode == 0, migrate.stderr

    assert cluster.running(), "forge migrate stopped the cluster the supervisors use"
    url = wait_for(lambda: _migrated_url(first, cluster), START_TIMEOUT, "the embedded cluster")
    postmaster = postmaster_pid(cluster)
    for sup in (first, second):
        sup.direct_url = url
        sup.wait_registered()
    _run_jobs(url, 4, "jobs on the shared cluster")
    assert first.running() and second.running()
    assert cluster.url == url and postmaster_pid(cluster) == postmaster


def test_a_killed_postmaster_is_restarted_on_its_port(cluster, nodes):
    sup = nodes("only")
    url = _start(sup, cluster)
    killed = postmaster_pid(cluster)
    os.kill(killed, signal.SIGKILL)

    def restarted() -> bool:
        try:
            pid = postmaster_pid(cluster)
        except (OSError, ValueError, IndexError):  # the new postmaster is writing its pid file
            return False
        return pid != killed and _accepts(url)

    wait_for(restarted, 15, "the supervisor to restart the killed postmaster on its port")
    _run_jobs(url, 2, "jobs dispatched after the restart")
    assert sup.running() and "is running again" in sup.log()


def postmaster_pid(cluster: EmbeddedPostgres) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def _start(sup: Supervisor, cluster: EmbeddedPostgres) -> str:
    """Start `sup` on a folder whose cluster it starts; its URL once it is up, migrated, and `sup` registered."""
    sup.start(wait=False)
    sup.direct_url = wait_for(lambda: _migrated_url(sup, cluster), START_TIMEOUT, "the embedded cluster")
    sup.wait_registered()
    return sup.direct_url


def _accepts(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _run_jobs(url: str, count: int, what: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(EVENTS_TABLE)
        ids = [forge.dispatch(conn, jobs.double, jobs.N(n=i)) for i in range(count)]
        wait_for(lambda: completed(conn, *ids), 30, what)


def _migrated_url(sup: Supervisor, cluster: EmbeddedPostgres) -> str | None:
    """The cluster's URL once it runs and is migrated; AssertionError if the supervisor exited first."""
    assert sup.running(), f"the supervisor exited with {sup.proc.poll() if sup.proc else None}:\n{sup.log_tail()}"
    url = cluster.url
    if url is None:
        return None
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            migrated = conn.execute("SELECT to_regclass('forge_nodes') IS NOT NULL").fetchone()
    except psycopg.OperationalError:  # its pid file is written before it takes connections
        return None
    return url if migrated and migrated[0] else None
