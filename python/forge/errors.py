"""Forge's small error vocabulary: every error Forge raises is a ForgeError."""


class ForgeError(Exception):
    """Base class of every error Forge raises on purpose."""


class ConfigError(ForgeError):
    """forge.toml (or a job definition's options) is invalid; the message names the key."""


class JobDefinitionError(ForgeError):
    """A @forge.job declaration is invalid (bad option, duplicate name)."""


class DispatchError(ForgeError):
    """A job could not be dispatched: wrong input type, unknown job, bad schedule."""


class DatabaseError(ForgeError):
    """The database could not be reached or set up (migrations, embedded cluster)."""


class PostgresNotInstalled(DatabaseError):
    """The embedded PostgreSQL cannot start: its binaries (initdb, pg_ctl) are not found ($FORGE_PG_BIN, PATH,
    /usr/lib/postgresql/*/bin). Raised before its data folder is made."""


class NoServiceUser(DatabaseError):
    """Forge runs as root, which PostgreSQL refuses, and the system user the embedded PostgreSQL would run as
    (postgres, or $FORGE_PG_USER) does not exist. Raised before its data folder is made."""


class SchemaTooNew(DatabaseError):
    """The database has schema migrations this version of Forge does not know (a newer Forge migrated it):
    nothing is applied and nothing runs on it. Raised by forge.db.migrate.migrate."""


class CoreError(ForgeError, RuntimeError):
    """The Rust core failed: its runtime, thread or eventfd could not be made, it was used after close() or
    in a forked child, or the database refused one of its statements. Raised by forge._core."""


class JobTimeout(ForgeError):
    """The job ran past its timeout and its worker process was killed."""


class JobCancelled(ForgeError):
    """An operator cancelled the job while it ran (forge.Jobs.cancel, forge jobs cancel); its worker was killed
    and the job is cancelled, never retried."""


class WorkerCrashed(ForgeError):
    """The worker process running the job died (signal, os._exit, OOM killer)."""


class JobOutOfMemory(ForgeError):
    """The job went over the memory its forge.Resources asked for (the message names the limit): its process tree
    was killed by the kernel's OOM killer in its memory cgroup, or an allocation past its address space limit
    failed. Counted as a crash when its worker was killed."""


class WorkerDisconnected(WorkerCrashed):
    """The job closed or broke its worker's socket to the supervisor (os.closerange(3, ...) closes it too), so
    the worker could not report how the job ended and exited. Counted as a crash, as the job did it."""


class UnknownJobType(ForgeError):
    """A row names a job type no job on this node is registered under."""


class InputDecodeError(ForgeError):
    """A job's stored input does not decode into the job's declared input type."""


class ResultNotStorable(ForgeError):
    """What a job handed back cannot be stored, so the job failed (not retried: it would hand back the same):
    a return value that is not JSON-encodable, holds a NUL character (\\u0000, which jsonb refuses) or is over
    1 MiB encoded; or a report the database refused anyway (a trigger, a constraint), named in the message."""


class LeaseLost(ForgeError):
    """A job's lease is no longer this node's: the node could not renew it (or found it lost) and killed the job's
    worker, or a completion written in the job's own transaction found it gone, and rolled the transaction back."""


class NodeLost(ForgeError):
    """The node running the job stopped renewing its lease; another node rescued the job."""


class OperationError(ForgeError):
    """An operation on jobs (forge.Jobs, forge.AsyncJobs, the forge CLI) was refused, and changed nothing: a bad
    argument (this class), or jobs it cannot act on (the subclasses)."""


class JobNotFound(OperationError):
    """No job has one of the ids given: `ids` lists them."""

    def __init__(self, message: str, ids: list[int]) -> None:
        super().__init__(message)
        self.ids = ids


class JobStateError(OperationError):
    """A job is in a state the operation does not take (retrying a completed job, cancelling a running one):
    `states` maps each such id to its state."""

    def __init__(self, message: str, states: dict[int, str]) -> None:
        super().__init__(message)
        self.states = states
