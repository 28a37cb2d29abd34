"""The worker process: runs the jobs the supervisor sends it, one at a time.

A worker is forked by the zygote with the app already imported. It owns no
state the supervisor needs: if it dies, the supervisor fails (or hands back)
the one job it was running and the zygote forks a fresh one. It exits 0 when
the supervisor closes its socket or when it retires itself (max_jobs_per_worker
or max_worker_memory reached) right after reporting a job, and with
EXIT_CANNOT_REPORT when a job left its socket unusable.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import msgspec

from ..completion import Completion, JobLease
from ..context import BaseContext, JobContext, LogSink, idle
from ..context_async import AsyncJobContext
from ..errors import InputDecodeError, ResultNotStorable, UnknownJobType
from ..job import Job, registry
from ..logs import safe_repr
from .confine import run_confined, worker_started
from .protocol import (
    Completed,
    Failed,
    FrameReader,
    Heartbeat,
    Log,
    Progress,
    RunJob,
    WorkerSettings,
    encode,
    error_payload,
    storable,
)

if TYPE_CHECKING:
    import psycopg

_log = logging.getLogger("forge.worker")
_PAGE_SIZE = resource.getpagesize()

#: The worker's exit status when it cannot send a job's outcome: the job closed or broke the worker's socket to
#: the supervisor (os.closerange(3, ...), a close of the wrong fd), so nothing more can be said on it. The
#: supervisor records the job's failure from this status (settle.killed_job_error), as a crash: the job did it.
EXIT_CANNOT_REPORT = 72


def serve(sock: socket.socket, settings: WorkerSettings) -> int:
    """Run jobs until the supervisor hangs up or this worker retires; the exit code."""
    _name_node(settings.owner)
    worker_started(settings.gpu_node)
    runner = JobRunner(sock, settings.dsn, settings.owner)
    code = _serve(sock, settings, runner)
    # The worker ends in os._exit: its connection (ctx.db, ctx.jobs) is closed here rather than dropped. Not
    # after a job broke its socket: it may have closed the connection's descriptor too, now maybe another file.
    if code != EXIT_CANNOT_REPORT:
        runner.close()
    return code


def _serve(sock: socket.socket, settings: WorkerSettings, runner: JobRunner) -> int:
    reader = FrameReader(RunJob)
    done = 0
    while True:
        # One frame at a time, though short jobs are sent several per write: the
        # ones not read yet stay in the socket, where the supervisor can take them
        # back for another worker while this one is busy. Each is reported on its
        # own, so the supervisor knows when the next one starts.
        frame = reader.receive_one(sock)
        if frame is None:
            return 0
        if frame.limits is None:
            outcome = runner.run(frame)
        else:  # the job asked for resources: confined to what it was given (and it may retire the worker)
            outcome = run_confined(runner.run, frame, settings.memory_cgroup)
        done += 1
        outcome.retiring = outcome.retiring or _should_retire(settings, done)
        try:
            sock.sendall(encode(outcome))
        except OSError as exc:  # EBADF, ENOTSOCK (its fd closed, maybe reused), EPIPE, ECONNRESET...
            _log.error("job %s cannot be reported: the worker's socket to the supervisor (file descriptor %s) is "
                       "closed or broken (%s); the worker exits with status %s", frame.id, sock.fileno(), exc,
                       EXIT_CANNOT_REPORT)
            return EXIT_CANNOT_REPORT
        if outcome.retiring:
            return 0


class JobRunner:
    """Decodes, runs and encodes the outcome of one job at a time."""

    def __init__(self, sock: socket.socket, dsn: str, owner: str) -> None:
        self._sock = sock
        self._dsn = dsn
        self._owner = owner  # the node's lease owner, for completions written in a job's transaction
        self._conn: psycopg.Connection[Any] | None = None
        self._async_conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: Any = None
        self._log_sink: LogSink = self._send_log  # bound once: a job that does not log costs nothing more

    def run(self, frame: RunJob) -> Completed | Failed:
        job = registry().get(frame.job_type)
        if job is None:
            return _failure(frame, UnknownJobType(f"no job named {frame.job_type!r} is registered"), False)
        try:
            value = msgspec.json.decode(frame.input, type=job.input_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            error = InputDecodeError(f"input of job {frame.id} does not decode into {_name(job.input_type)}: {exc}")
            return _failure(frame, error, False)
        completion = Completion(JobLease(frame.id, frame.attempt, self._owner, time.monotonic()))
        ctx = self._context(frame, completion, job.is_async)
        try:
            return self._outcome(frame, job, ctx, value, completion)
        finally:
            self._end_transactions(frame)

    def _outcome(self, frame: RunJob, job: Job[Any], ctx: BaseContext, value: Any,
                 completion: Completion) -> Completed | Failed:
        try:
            result = self._call(job, ctx, value)
        except BaseException as exc:  # job code may raise anything, SystemExit included
            if completion.committed is not None:
                return _after_commit(frame, completion, exc)
            return _failure(frame, exc, job.retry.retries(exc) and not isinstance(exc, ResultNotStorable))
        if completion.committed is not None:  # the job's end is written already: this report is fenced
            return Completed(frame.id, frame.attempt, completion.committed.result)
        try:
            encoded = None if result is None else msgspec.json.encode(result)
        except BaseException as exc:  # TypeError, UnicodeEncodeError (a surrogate), or whatever a value raises
            return _not_encodable(frame, exc)
        # The core checks the rest (NUL characters, the size limit) and fails the job if it cannot be stored.
        return Completed(frame.id, frame.attempt, encoded)

    def _call(self, job: Job[Any], ctx: BaseContext, value: Any) -> Any:
        if isinstance(ctx, JobContext):
            return _call_sync(job, ctx, value)
        assert isinstance(ctx, AsyncJobContext)
        if self._loop is None:
            import uvloop

            self._loop = uvloop.new_event_loop()
        return self._loop.run_until_complete(_call_async(job, ctx, value))

    def _end_transactions(self, frame: RunJob) -> None:
        """Roll back a transaction a job left open on a worker connection (a bare BEGIN), so the next job starts
        on an idle one: what it left uncommitted is lost, as if its worker had died. One that cannot be rolled
        back is closed (the next use opens another)."""
        for conn in (self._conn, self._async_conn):
            if conn is not None and not conn.closed and not idle(conn):
                _log.warning("job %s (attempt %s) left a transaction open on ctx.db: rolled back", frame.id,
                             frame.attempt)
                self._roll_back(conn)

    def _roll_back(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        import psycopg

        if isinstance(conn, psycopg.AsyncConnection):
            try:
                self._loop.run_until_complete(conn.rollback())
            except psycopg.Error:  # the connection broke meanwhile
                self._loop.run_until_complete(conn.close())
            return
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()

    def _context(self, frame: RunJob, completion: Completion, is_async: bool) -> BaseContext:
        def report(kind: str, percent: int | None, message: str | None) -> None:
            if kind == "progress":
                text = None if message is None else storable(_text(message))
                self._sock.sendall(encode(Progress(frame.id, frame.attempt, percent or 0, text)))
            else:
                self._sock.sendall(encode(Heartbeat(frame.id, frame.attempt)))

        run = {"job_id": frame.id, "job_type": frame.job_type, "attempt": frame.attempt,
               "parent_id": frame.parent_id, "report": report, "completion": completion, "log_sink": self._log_sink}
        if is_async:
            return AsyncJobContext(connect=self._async_connection, **run)
        return JobContext(connect=self._connection, **run)

    def close(self) -> None:
        """Close the jobs' connections, those opened (the async one at the libpq level: no loop runs here)."""
        if self._conn is not None:
            self._conn.close()
        if self._async_conn is not None:
            self._async_conn.pgconn.finish()

    def _send_log(self, job_id: int, attempt: int, level: str, message: str, fields: dict[str, Any]) -> None:
        """Where ctx.log's lines go to be stored: a Log frame each, to the supervisor, whose core caps them
        ([node] job_log_lines, where job code cannot get around it) and cuts them to 4 KiB (storable.rs)."""
        text, encoded = storable(_text(message)), _fields_json(fields) if fields else None
        _send_unless_full(self._sock, encode(Log(job_id, attempt, level, text, encoded)))

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            import psycopg  # usually loaded already: by the app, or by the zygote once idle

            self._conn = psycopg.connect(self._dsn, autocommit=True, application_name=self._application_name())
        return self._conn

    def _async_connection(self) -> psycopg.AsyncConnection[Any]:
        """The async jobs' connection. ctx.db is a property, which cannot await the connect from the job's
        running loop, so the first use in a worker's life connects on a helper thread with a loop of its own,
        joined at once (the job waits for it, as a sync job waits for its first ctx.db); the connection then
        serves on the worker's loop (psycopg binds none to it)."""
        if self._async_conn is None or self._async_conn.closed or self._async_conn.broken:
            self._async_conn = _connect_async(self._dsn, self._application_name())
        return self._async_conn

    def _application_name(self) -> str:
        """What pg_stat_activity shows of a worker's connection, like the core's `forge <owner> <role>`."""
        return f"forge {self._owner} worker"


def _call_sync(job: Job[Any], ctx: JobContext, value: Any) -> Any:
    if not job.complete_in_transaction:
        return job.fn(ctx, value)
    with ctx.transaction():  # the whole body, and the job's end written just before it commits
        result = job.fn(ctx, value)
        ctx.complete(result)
    return result


async def _call_async(job: Job[Any], ctx: AsyncJobContext, value: Any) -> Any:
    if not job.complete_in_transaction:
        return await job.fn(ctx, value)
    async with ctx.transaction():
        result = await job.fn(ctx, value)
        ctx.complete(result)
    return result


def _connect_async(dsn: str, application_name: str) -> psycopg.AsyncConnection[Any]:
    import asyncio

    import psycopg

    opened: list[psycopg.AsyncConnection[Any]] = []
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            opened.append(asyncio.run(psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                                       application_name=application_name)))
        except BaseException as exc:  # raised again in the job, where it belongs
            failed.append(exc)

    thread = threading.Thread(target=connect, name="forge-connect")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return opened[0]


def _after_commit(frame: RunJob, completion: Completion, exc: BaseException) -> Completed:
    """The job raised after its completion committed: it is completed (with the committed result), and says so."""
    assert completion.committed is not None
    _log.warning("job %s (attempt %s) raised %s after its completion committed (ctx.complete); it stays "
                 "completed", frame.id, frame.attempt, _text(exc))
    return Completed(frame.id, frame.attempt, completion.committed.result)


def _name_node(node: str) -> None:
    """Job log lines of the stream name this node too, beside the job's fields that ctx.log gives them."""
    def add_node(record: logging.LogRecord) -> bool:
        fields = getattr(record, "forge_fields", None)
        if fields is not None:  # a dict made for this line (JobLogger._emit)
            fields["node"] = node
        return True

    logging.getLogger("forge.job").addFilter(add_node)


def _fields_json(fields: dict[str, Any]) -> bytes:
    """The JSON of a log line's fields: a value msgspec cannot encode as its repr(); if encoding fails anyway (a
    surrogate), every value as text (a string as it is, anything else as its repr()) made storable. NUL escapes
    are the core's (storable.rs)."""
    try:
        return msgspec.json.encode(fields, enc_hook=safe_repr)
    except BaseException:  # job values run their own code
        return msgspec.json.encode({storable(_text(k)): storable(v if isinstance(v, str) else safe_repr(v))
                                    for k, v in fields.items()})


def _send_unless_full(sock: socket.socket, frame: bytes) -> None:
    """Send a frame unless the socket has no room at all (the supervisor is far behind): then it is dropped, and
    the job does not wait for it. A frame begun is finished, so the stream stays whole."""
    try:
        sent = sock.send(frame, socket.MSG_DONTWAIT)
        if sent < len(frame):
            sock.sendall(memoryview(frame)[sent:])
    except OSError:  # full (BlockingIOError), or broken by the job: the outcome's send tells (EXIT_CANNOT_REPORT)
        pass


def _failure(frame: RunJob, exc: BaseException, retryable: bool) -> Failed:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        trace = "".join(traceback.format_exception(exc))
    except BaseException as error:  # its own safeguards aside, formatting runs the exception's code too
        trace = f"<the traceback could not be formatted: {type(error).__name__}>"
    return Failed(frame.id, frame.attempt, retryable, error_payload(name, _text(exc), frame.attempt, trace))


def _not_encodable(frame: RunJob, exc: BaseException) -> Failed:
    """The job returned a value msgspec cannot encode: it fails, not retried (it would return the same)."""
    reason = f"it is not JSON-encodable: {_text(exc)}"
    return _failure(frame, ResultNotStorable(f"the result of job {frame.id} (attempt {frame.attempt}) cannot be "
                                             f"stored: {reason}"), False)


def _text(value: object) -> str:
    """str(value), or a placeholder naming what str() raised: job code may make __str__ raise anything."""
    try:
        return str(value)
    except BaseException as exc:
        return f"<str() raised {type(exc).__name__}>"


def _should_retire(settings: WorkerSettings, done: int) -> bool:
    if settings.max_jobs is not None and done >= settings.max_jobs:
        return True
    return settings.max_memory is not None and rss_bytes() > settings.max_memory


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)
