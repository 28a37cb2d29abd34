"""A stop the database cannot take: SIGTERM while PostgreSQL is unreachable. The supervisor waits up to
shutdown_grace for the database to take its final reports, then exits with status 5, saying how many
outcomes it leaves to the rescue; they are not lost: a live node rescues those jobs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from testapp import endings

import forge

from ..faults.proxy import Proxy
from .conftest import finished, job_row, wait_for

ENDINGS = ["testapp.endings"]
NODE = {"shutdown_grace": "2s", "heartbeat_interval": "500ms", "heartbeat_timeout": "3s"}


@pytest.fixture
def proxy(app_db: str) -> Iterator[Proxy]:
    """A TCP proxy to the test's PostgreSQL, so one supervisor can lose the database alone."""
    parts = urlsplit(app_db)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    proxy.stop()


def _through(url: str, proxy: Proxy) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{proxy.url_netloc}"))


def test_a_stop_the_database_cannot_take_exits_5_and_leaves_the_jobs_to_the_rescue(supervisor, app_db, db, proxy):
    node = supervisor(modules=ENDINGS, url=_through(app_db, proxy), **NODE)
    job_id = forge.dispatch(db, endings.sleep_quietly, endings.Seconds(seconds=1))
    wait_for(lambda: job_row(db, job_id)["status"] == "running", what="the job to start")
    proxy.set_mode("refuse")  # the job then ends; its completion cannot be written
    began = time.monotonic()
    assert node.stop() == 5
    assert time.monotonic() - began >= 2.0, "the stop did not wait shutdown_grace for the database"
    log = node.log()
    assert re.search(r"1 job outcome\(s\) not written .* left to the rescue", log), node.log_tail()
    assert not re.search(r"node \S+ stopped$", log, re.MULTILINE)
    assert job_row(db, job_id)["status"] == "running"

    supervisor(modules=ENDINGS, **NODE)  # a live node rescues it once its lease expires, and runs it again
    wait_for(lambda: finished(db, job_id), timeout=20, what="the rescued job to run again")
    row = job_row(db, job_id)
    assert (row["status"], row["attempts"], row["last_error"]["type"]) == ("completed", 2, "forge.errors.NodeLost")
