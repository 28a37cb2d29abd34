"""The Rust core (forge._core.Core) used directly on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid

from forge._core import Core
from forge.db.queries import SQL_DIR
from forge.retry import Retry
from forge.supervisor.main import policy


def test_a_core_refuses_calls_from_a_forked_child(database_url):
    core = Core(
        database_url,
        str(uuid.uuid4()),
        ["general"],
        [],
        (SQL_DIR / "engine.sql").read_text(encoding="utf-8"),
        default_policy=policy("", Retry()),
        hostname="test",
        roles=["worker"],
        workers=1,
    )
    try:
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child inherits the Core but not its runtime thread
            try:
                core.stats()
                os.write(answer_w, b"answered")
            except RuntimeError as exc:
                os.write(answer_w, str(exc).encode())
            os._exit(0)
        os.close(answer_w)
        os.waitpid(pid, 0)
        with os.fdopen(answer_r, "rb") as answer:
            assert b"created in another process" in answer.read()
        assert "completed" in core.stats()  # the parent's Core is untouched
    finally:
        assert core.close()
