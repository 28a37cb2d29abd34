"""The supervisor's log queue (supervisor/log_queue.py) writing to a real pipe nobody reads: logging never waits,
the lines the full queue has no room for are dropped and counted, and lines say how many."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

from forge.supervisor import log_queue

_log = logging.getLogger("forge.supervisor.test")
DROPPED = re.compile(r"(\d+) log line\(s\) dropped")


@contextmanager
def root_logging_to_a_pipe() -> Iterator[tuple[int, logging.StreamHandler[TextIO]]]:
    """The root logger's one handler writes to a pipe (its read end yielded, unread until the test reads it); in
    the test's body, since pytest adds its own capturing handlers to the root logger only around it."""
    read_end, write_end = os.pipe()
    handler = logging.StreamHandler(os.fdopen(write_end, "w"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield read_end, handler
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        os.close(read_end)  # first: a write still blocked on the pipe then fails instead of blocking the close
        with suppress(BrokenPipeError):
            handler.stream.close()


def test_logging_to_a_full_pipe_drops_and_counts_lines_instead_of_blocking():
    with root_logging_to_a_pipe() as (read_end, handler):
        queued = log_queue.start()
        logged = log_queue.QUEUE_SIZE * 2
        line = "y" * 1000  # the pipe takes some 64 of them, the queue QUEUE_SIZE: the rest are dropped
        started = time.monotonic()
        logging_thread = threading.Thread(target=lambda: [_log.info("%d %s", i, line) for i in range(logged)],
                                          daemon=True)
        logging_thread.start()
        logging_thread.join(10)
        assert not logging_thread.is_alive(), "logging blocked on the full pipe"
        took = time.monotonic() - started

        output = bytearray()
        reader = threading.Thread(target=lambda: _read_all(read_end, output))
        reader.start()
        log_queue.stop(queued)
        assert logging.getLogger().handlers == [handler], "the stop did not give the root logger its handler back"
        handler.stream.close()  # the write end: the reader sees the end
        reader.join(10)
        assert not reader.is_alive()
    lines = output.decode().splitlines()
    written = [x for x in lines if x.endswith(line)]
    said = [int(m.group(1)) for x in lines if (m := DROPPED.search(x))]
    assert said and sum(said) > 0, f"no line says lines were dropped ({len(lines)} lines, in {took:.1f}s)"
    assert len(written) + sum(said) == logged, f"{len(written)} written + {sum(said)} said dropped != {logged}"
    numbers = [int(x.split()[0]) for x in written]
    assert numbers == sorted(numbers), "lines reordered"


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into.extend(chunk)
