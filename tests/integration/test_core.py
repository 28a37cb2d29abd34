"""The Rust core (forge._core.Core) used directly on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

from forge._core import Core
from forge.config import NodeConfig
from forge.errors import CoreError
from forge.supervisor.main import core_settings


def test_a_core_refuses_calls_from_a_forked_child(database_url):
    core = Core(core_settings(NodeConfig(workers=1), database_url, uuid.uuid4(), {}))
    try:
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child inherits the Core but not its runtime thread
            try:
                core.stats()
                os.write(answer_w, b"answered")
            except CoreError as exc:
                os.write(answer_w, str(exc).encode())
            os._exit(0)
        os.close(answer_w)
        os.waitpid(pid, 0)
        with os.fdopen(answer_r, "rb") as answer:
            assert b"created in another process" in answer.read()
        assert "completed" in core.stats()  # the parent's Core is untouched
    finally:
        assert core.close()


def test_a_closed_core_raises_the_core_error(database_url):
    core = Core(core_settings(NodeConfig(workers=1), database_url, uuid.uuid4(), {}))
    assert core.close()
    with pytest.raises(CoreError, match="closed"):
        core.stats()
    assert isinstance(CoreError("x"), RuntimeError)
