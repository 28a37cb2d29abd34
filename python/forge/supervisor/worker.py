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
import traceback
from typing import TYPE_CHECKING, Any

import msgspec

from ..context import JobContext
from ..errors import InputDecodeError, ResultNotStorable, UnknownJobType
from ..job import Job, registry
from .confine import run_confined, worker_started
from .protocol import (
    Completed,
    Failed,
    FrameReader,
    Heartbeat,
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
    worker_started(settings.gpu_node)
    runner = JobRunner(sock, settings.dsn)
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

    def __init__(self, sock: socket.socket, dsn: str) -> None:
        self._sock = sock
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._loop: Any = None

    def run(self, frame: RunJob) -> Completed | Failed:
        job = registry().get(frame.job_type)
        if job is None:
            return _failure(frame, UnknownJobType(f"no job named {frame.job_type!r} is registered"), False)
        try:
            value = msgspec.json.decode(frame.input, type=job.input_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            error = InputDecodeError(f"input of job {frame.id} does not decode into {_name(job.input_type)}: {exc}")
            return _failure(frame, error, False)
        ctx = self._context(frame)
        try:
            result = self._call(job, ctx, value)
        except BaseException as exc:  # job code may raise anything, SystemExit included
            return _failure(frame, exc, job.retry.retries(exc))
        try:
            encoded = None if result is None else msgspec.json.encode(result)
        except BaseException as exc:  # TypeError, UnicodeEncodeError (a surrogate), or whatever a value raises
            return _not_encodable(frame, exc)
        # The core checks the rest (NUL characters, the size limit) and fails the job if it cannot be stored.
        return Completed(frame.id, frame.attempt, encoded)

    def _call(self, job: Job[Any], ctx: JobContext, value: Any) -> Any:
        if not job.is_async:
            return job.fn(ctx, value)
        if self._loop is None:
            import uvloop

            self._loop = uvloop.new_event_loop()
        return self._loop.run_until_complete(job.fn(ctx, value))

    def _context(self, frame: RunJob) -> JobContext:
        def report(kind: str, percent: int | None, message: str | None) -> None:
            if kind == "progress":
                text = None if message is None else storable(_text(message))
                self._sock.sendall(encode(Progress(frame.id, frame.attempt, percent or 0, text)))
            else:
                self._sock.sendall(encode(Heartbeat(frame.id, frame.attempt)))

        return JobContext(
            job_id=frame.id,
            job_type=frame.job_type,
            attempt=frame.attempt,
            parent_id=frame.parent_id,
            report=report,
            connect=self._connection,
        )

    def close(self) -> None:
        """Close the job's connection, if one was opened."""
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            import psycopg  # usually loaded already: by the app, or by the zygote once idle

            self._conn = psycopg.connect(self._dsn, autocommit=True)
        return self._conn


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
