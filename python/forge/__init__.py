"""Forge: durable background jobs for Python on PostgreSQL.

    import forge, msgspec

    class SendEmail(msgspec.Struct):
        user_id: int

    @forge.job(retry=forge.Retry(max_attempts=5), timeout="5m", priority="high")
    def send_welcome_email(ctx: forge.JobContext, input: SendEmail) -> None: ...

    with psycopg.connect(url) as conn:
        forge.dispatch(conn, send_welcome_email, SendEmail(user_id=1))

Run the jobs with `forge-supervisor -c forge.toml`.
"""

from typing import TYPE_CHECKING

from .context import JobContext
from .context_async import AsyncJobContext
from .dispatch import dispatch, dispatch_async, dispatch_many, dispatch_many_async
from .errors import (
    ConfigError,
    DatabaseError,
    DispatchError,
    ForgeError,
    InputDecodeError,
    JobDefinitionError,
    JobNotFound,
    JobStateError,
    JobTimeout,
    OperationError,
    UnknownJobType,
    WorkerCrashed,
    WorkerDisconnected,
)
from .job import PRIORITIES, Job, Resources, job
from .marks import mutation, query
from .operations import AsyncJobs, JobRecord, Jobs
from .retry import Retry
from .version import version as _version

if TYPE_CHECKING:
    #: This Forge's version (forge/version.py: the installed package's, read on first use).
    __version__: str
else:
    def __getattr__(name: str) -> str:
        if name == "__version__":
            return _version()
        raise AttributeError(f"module 'forge' has no attribute {name!r}")

__all__ = [
    "PRIORITIES",
    "AsyncJobContext",
    "AsyncJobs",
    "ConfigError",
    "DatabaseError",
    "DispatchError",
    "ForgeError",
    "InputDecodeError",
    "Job",
    "JobContext",
    "JobDefinitionError",
    "JobNotFound",
    "JobRecord",
    "JobStateError",
    "JobTimeout",
    "Jobs",
    "OperationError",
    "Resources",
    "Retry",
    "UnknownJobType",
    "WorkerCrashed",
    "WorkerDisconnected",
    "__version__",
    "dispatch",
    "dispatch_async",
    "dispatch_many",
    "dispatch_many_async",
    "job",
    "mutation",
    "query",
]
