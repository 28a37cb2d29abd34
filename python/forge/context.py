"""JobContext: what a running job can do besides computing its result."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Callable

from .dispatch import dispatch, dispatch_many
from .errors import ForgeError
from .job import Job

if TYPE_CHECKING:
    import psycopg

_log = logging.getLogger("forge.job")

#: Where a job's log lines go to be stored: (job id, attempt, level: "debug", "info", "warn" or "error",
#: message, the call's fields). It must not raise, nor block the job (the worker's sends each line to the supervisor).
LogSink = Callable[[int, int, str, str, dict[str, Any]], None]


class JobLogger:
    """Structured logging for one job: ctx.log.info("charged", amount=12).

    A line at or above the log level ([log] level) goes to the log stream (stderr, with the job's fields) and to
    the sink, which stores it in forge_job_logs; a line below it costs one level check. Never raises.
    """

    def __init__(self, fields: dict[str, Any], sink: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self._fields = fields
        self._sink = sink

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warn", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", message, fields)

    def _emit(self, level: int, name: str, message: str, fields: dict[str, Any]) -> None:
        if not _log.isEnabledFor(level):
            return
        _log.log(level, message, extra={"forge_fields": {**self._fields, **fields}})
        if self._sink is not None:
            self._sink(name, message, fields)


class JobContext:
    """Handed to every job as its first argument.

    job_id, job_type, attempt (1-based) and parent_id describe the run;
    progress() and heartbeat() report to the supervisor; db is a psycopg
    connection of the worker's own (autocommit; use db.transaction());
    dispatch() enqueues child jobs whose parent_id is this job.
    """

    def __init__(
        self,
        *,
        job_id: int,
        job_type: str,
        attempt: int,
        parent_id: int | None,
        report: Callable[[str, int | None, str | None], None],
        connect: Callable[[], psycopg.Connection[Any]],
        log_sink: LogSink | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.parent_id = parent_id
        self._report = report
        self._connect = connect
        self._log_sink = log_sink

    @functools.cached_property
    def log(self) -> JobLogger:
        """The job's logger, made on first use: most jobs never log, and a context is made per job."""
        fields = {"job_id": self.job_id, "job_type": self.job_type, "attempt": self.attempt}
        sink = None if self._log_sink is None else functools.partial(self._log_sink, self.job_id, self.attempt)
        return JobLogger(fields, sink)

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The worker's database connection, opened on first use and reused across jobs."""
        return self._connect()

    def progress(self, percent: int, message: str | None = None) -> None:
        """Report progress, 0-100, with an optional message (written in batches by the supervisor)."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ForgeError(f"progress({percent!r}): must be an integer from 0 to 100")
        self._report("progress", percent, message)

    def heartbeat(self) -> None:
        """Tell the supervisor this job is alive (for jobs with a heartbeat_timeout)."""
        self._report("heartbeat", None, None)

    def dispatch(self, job: Job[Any], input: Any, **options: Any) -> int:
        """Dispatch a child job (committed at once unless inside ctx.db.transaction())."""
        return dispatch(self.db, job, input, parent_id=self.job_id, **options)

    def dispatch_many(self, job: Job[Any], inputs: Any, **options: Any) -> list[int]:
        """Dispatch many child jobs in one round trip."""
        return dispatch_many(self.db, job, inputs, parent_id=self.job_id, **options)
