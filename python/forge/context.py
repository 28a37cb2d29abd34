"""JobContext: what a running job can do besides computing its result."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Callable

from .dispatch import dispatch, dispatch_many
from .errors import ForgeError
from .job import Job
from .operations import Jobs

if TYPE_CHECKING:
    import psycopg

_log = logging.getLogger("forge.job")


class JobLogger:
    """Structured logging for one job: ctx.log.info("charged", amount=12)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(logging.INFO, message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit(logging.WARNING, message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, message, fields)

    def _emit(self, level: int, message: str, fields: dict[str, Any]) -> None:
        _log.log(level, message, extra={"forge_fields": {**self._fields, **fields}})


class JobContext:
    """Handed to every job as its first argument.

    job_id, job_type, attempt (1-based) and parent_id describe the run;
    progress() and heartbeat() report to the supervisor; db is a psycopg
    connection of the worker's own (autocommit; use db.transaction());
    jobs is forge.Jobs on that connection (find, retry, discard, cancel
    other jobs, pause types); dispatch() enqueues child jobs whose
    parent_id is this job.
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
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.parent_id = parent_id
        self._report = report
        self._connect = connect

    @functools.cached_property
    def log(self) -> JobLogger:
        """The job's logger, made on first use: most jobs never log, and a context is made per job."""
        return JobLogger({"job_id": self.job_id, "job_type": self.job_type, "attempt": self.attempt})

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The worker's database connection, opened on first use and reused across jobs."""
        return self._connect()

    @property
    def jobs(self) -> Jobs:
        """forge.Jobs on the worker's connection (ctx.db): each call is a transaction of its own, or part of
        the job's own inside `with ctx.db.transaction():`."""
        return Jobs(self.db)

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
