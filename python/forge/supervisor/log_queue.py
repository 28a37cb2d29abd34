"""The supervisor's log queue: its loop never waits for a log write.

The loop's records go into a bounded queue without waiting (QueueHandler, put_nowait); one thread writes them
to the handlers logs.configure installed (QueueListener). When the output does not take them (stderr a pipe
nobody reads, a terminal paused by Ctrl-S) that thread waits, the queue fills, and further lines are dropped
and counted; once the output takes lines again, a line says how many were dropped (at most one such line every
DROPS_EVERY seconds), and the stop says how many in all. Before the queue, a full pipe blocked the loop on its
next log line: the zygote fenced it and killed every worker, and the jobs were stranded (issue 12, defect 3).

Fork safety: start() is called after the zygote is forked (main.py), so neither the zygote nor the workers it
forks inherit the thread, or a lock it may hold mid-write; they log straight to stderr (a worker blocked on a
full output blocks only its own job).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from logging.handlers import QueueHandler, QueueListener

#: Records waiting for the output, at most: about a minute of a busy node's lines, a few MB.
QUEUE_SIZE = 10_000
#: Seconds between two lines saying how many lines were dropped.
DROPS_EVERY = 10.0
#: Seconds stop() waits for the queue to be written: an output that takes nothing must not hold up the exit.
STOP_WAIT = 2.0

_log = logging.getLogger("forge.supervisor")


class DroppingQueueHandler(QueueHandler):
    """Enqueues a record without waiting; one the full queue has no room for is dropped and counted."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self._lock = threading.Lock()  # the loop counts, the listener's thread takes the count
        self._dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def take_dropped(self) -> int:
        """Lines dropped since the last call."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped


class LogQueue(QueueListener):
    """Writes the queued records to the real handlers on its own thread, and says how many lines were dropped."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None], *targets: logging.Handler) -> None:
        super().__init__(records, *targets, respect_handler_level=True)
        self.records = records
        self.handler = DroppingQueueHandler(records)
        self.dropped = 0  # in all
        self._said_at = -DROPS_EVERY

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        if time.monotonic() - self._said_at >= DROPS_EVERY:
            self._say_dropped("")

    def _say_dropped(self, suffix: str) -> None:
        """The line saying how many lines were dropped since it was last said, if any were."""
        dropped = self.handler.take_dropped()
        if not dropped:
            return
        self.dropped += dropped
        self._said_at = time.monotonic()
        record = _log.makeRecord(
            _log.name, logging.WARNING, __file__, 0,
            "%d log line(s) dropped: the log output did not take them in time (%d in all)%s",
            (dropped, self.dropped, suffix), None,
        )
        super().handle(record)

    def finish(self) -> bool:
        """Write what is queued, for up to STOP_WAIT seconds each for room and for the writes, then the count of
        lines dropped since it was last said; whether that was done. An output still blocked after that keeps
        the rest (the thread is a daemon: it ends with the process)."""
        try:
            self.records.put(None, timeout=STOP_WAIT)  # QueueListener's sentinel: the thread ends there
        except queue.Full:
            return False
        thread = self._thread  # QueueListener's own thread (a private attribute since Python 3.2)
        if thread is not None:
            thread.join(STOP_WAIT)
            if thread.is_alive():
                return False
            self._thread = None
        self._say_dropped(" at the stop")
        return True


def start() -> LogQueue:
    """Put the root logger's handlers behind a queue and start the thread that writes to them. Call it only
    after the zygote is forked (see the module docstring)."""
    root = logging.getLogger()
    listener = LogQueue(queue.Queue(QUEUE_SIZE), *root.handlers)
    root.handlers[:] = [listener.handler]
    listener.start()
    return listener


def stop(listener: LogQueue) -> None:
    """Write the queue out (bounded, see LogQueue.finish) and give the root logger its handlers back, unless the
    output still blocks: then the last lines (of the exit) are dropped too, rather than block the exit."""
    if listener.finish():
        logging.getLogger().handlers[:] = list(listener.handlers)
