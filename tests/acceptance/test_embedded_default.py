"""The embedded default: with no [database] url, forge-supervisor starts its own PostgreSQL under the config
folder's .forge/, runs jobs on it, and stops it when it stops."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from testapp import jobs

import forge
from forge.db.embedded import EmbeddedPostgres

from ..supervisors import START_TIMEOUT, Supervisor, alive
from .conftest import APPS, DEFAULT_NODE, EVENTS_TABLE, completed, wait_for


@pytest.fixture
def folder() -> Iterator[Path]:
    """The supervisor's config folder, a short /tmp one; a cluster left running in it (the supervisor was
    killed, or failed to stop it) is stopped before the folder is removed."""
    path = Path(tempfile.mkdtemp(prefix="forge-default-"))
    try:
        yield path
    finally:
        EmbeddedPostgres(path / ".forge" / "postgres").stop()
        shutil.rmtree(path, ignore_errors=True)


def test_without_a_database_url_the_supervisor_runs_its_own_postgresql(folder):
    cluster = EmbeddedPostgres(folder / ".forge" / "postgres")
    sup = Supervisor(folder, None, modules=["testapp.jobs"], node={**DEFAULT_NODE, "workers": 1}, app_path=APPS)
    assert "[database]" not in sup.config.read_text()
    try:
        sup.start(wait=False)
        sup.direct_url = wait_for(lambda: _migrated_url(sup, cluster), START_TIMEOUT, "the embedded cluster")
        sup.wait_registered()
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        with psycopg.connect(sup.direct_url, autocommit=True) as conn:
            conn.execute(EVENTS_TABLE)
            job_id = forge.dispatch(conn, jobs.double, jobs.N(n=21))
            wait_for(lambda: completed(conn, job_id), what="a job on the embedded cluster")
        assert sup.stop() == 0
        assert not cluster.running() and not cluster.url_file.exists()
        assert not alive(postmaster)
    finally:
        if sup.running():
            sup.stop(signal.SIGKILL)


def _migrated_url(sup: Supervisor, cluster: EmbeddedPostgres) -> str | None:
    """The cluster's URL once the supervisor started it (it writes the URL file once connections are taken)
    and migrated it; AssertionError if the supervisor exited first."""
    assert sup.running(), f"the supervisor exited with {sup.proc.poll()}:\n{sup.log_tail()}"
    if not cluster.url_file.exists():
        return None
    url = cluster.url_file.read_text().strip()
    with psycopg.connect(url, autocommit=True) as conn:
        migrated = conn.execute("SELECT to_regclass('forge_nodes') IS NOT NULL").fetchone()
    return url if migrated and migrated[0] else None
