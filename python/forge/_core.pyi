"""The Rust core of Forge's supervisor: claiming, reporting, leases, maintenance and migrations.

Private to the engine: the supervisor's modules and forge.db are its only users. All
database I/O of a Core runs on one background thread (a tokio runtime) that the Core
starts, so a Core must only be created after the zygote has been forked.
"""

from typing import final

__all__ = ["ClaimedJob", "Core", "CoreSettings", "JobPolicy", "migrate", "parse_sql", "planner_options"]

@final
class JobPolicy:
    """How the core retries one job type: the backoff of its retry policy.

    backoff is "exponential" (base, 2*base, 4*base...), "linear" (base,
    2*base, 3*base...) or "fixed" (base every time); each delay is capped by
    max_ms when given, then spread by +/- jitter (a fraction, 0.0-1.0).
    """

    job_type: str
    def __new__(
        cls, job_type: str, backoff: str, base_ms: float, max_ms: float | None, jitter: float
    ) -> JobPolicy: ...
    def delay_ms(self, attempt: int) -> float:
        """The delay before retrying after failed attempt number `attempt` (1-based), jitter included."""

@final
class ClaimedJob:
    """A job this node now holds the lease of (status claimed)."""

    id: int
    job_type: str
    attempt: int
    max_attempts: int
    priority: int
    input: bytes
    """The job's input, JSON as stored."""
    parent_id: int | None

@final
class CoreSettings:
    """Everything a Core is made from, validated once; durations in seconds.

    The defaults are config.py's (NodeConfig, RetentionConfig);
    forge.supervisor.main.core_settings builds one from [node] and
    [retention]. owner is the supervisor run's instance id (a UUID string),
    written to claimed_by and required by every later statement.
    Before the first claim the core registers the run in forge_nodes (owner,
    hostname, pid, roles, capabilities, workers, the job types of `policies`)
    and keeps that row's heartbeat fresh. Only jobs whose job_type is one of
    `policies` are claimed, so a node never takes a job it cannot run (rolling
    deploys are safe); a failure of any other type is retried by
    default_policy. claim_batch: most rows one claim statement takes.

    heartbeat_timeout: a lease not renewed this long is rescued by any node's
    maintenance sweep; it also sets the client-side timeout of every statement
    round and connection attempt (a third of it, within 1-10 s; the server's
    statement_timeout is the same and its lock_timeout half of it), so a
    connection that hangs is replaced well before the leases expire.
    fence_after: the supervisor's self-fencing limit
    (forge.supervisor.lease.fence_after); a held lease whose job's row
    another session keeps locked, so that the heartbeat cannot renew it, is
    given up (reported by lost()) at the last round before it would be
    older than that.
    job_log_lines: most log lines (log()) stored per attempt of a job.
    max_crashes: crash-class endings (fail(crashed=True), a lost lease) after
    which a job is failed whatever max_attempts says, with a "reason" in
    last_error. maintenance_interval: how often this node sweeps (rescue of
    lost nodes' jobs, failed -> dead_letter after dead_letter_after, dead
    letters deleted after dead_letter_retain unless the row sets its own
    (dead_letter_after likewise), completed, cancelled and discarded rows
    deleted after retain_completed, retain_cancelled and retain_discarded
    (None: kept forever; by a walk of the primary key, 20 windows of 1,000
    rows a round at most), idempotency keys of jobs finished over retain_idempotency ago
    released (None: held as long as the row; by a walk of the keyed rows, as many
    windows), due jobs of types no node has run for unknown_type_grace failed,
    registrations of nodes silent for max(10 x heartbeat timeout, 1 h)
    deleted). Each connection's application_name is "forge <owner> <role>"
    (role: claim, main, heartbeat, maintenance, LISTEN).

    Raises ValueError naming the setting when a value is out of range:
    intervals (fence_after included) must be at least 1 ms, dead_letter_after,
    dead_letter_retain, unknown_type_grace and the retentions at least 0, counts at least 1
    (job_log_lines: 0 to 2^32 - 1),
    heartbeat_timeout greater than heartbeat_interval and fence_after, owner
    a UUID.
    """

    def __new__(
        cls,
        *,
        dsn: str,
        owner: str,
        hostname: str,
        roles: list[str],
        workers: int,
        capabilities: list[str],
        policies: list[JobPolicy],
        default_policy: JobPolicy,
        claim_batch: int,
        poll_interval: float,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        fence_after: float,
        max_crashes: int,
        maintenance_interval: float,
        dead_letter_after: float,
        dead_letter_retain: float,
        unknown_type_grace: float,
        retain_completed: float | None,
        retain_cancelled: float | None,
        retain_discarded: float | None,
        retain_idempotency: float | None,
        job_log_lines: int,
    ) -> CoreSettings: ...

@final
class Core:
    """The claim loop, the batched reporter and the lease heartbeat of one supervisor.

    Claims are demand-driven: request(n) grants n credits, and the core claims
    due jobs (at most claim_batch per statement) whenever it holds credits and
    has a reason: a NOTIFY on channel forge_jobs (payload: milliseconds until
    the job is due), a retry it scheduled itself coming due, a previous claim
    that came back full, or poll_interval without a claim. close() records the
    stop in forge_nodes. Raises ConnectionError when the database cannot be
    reached at start, and forge.errors.CoreError when the core cannot start
    (its thread, runtime or eventfd) or the registration is refused. While the
    database is unreachable nothing raises: reports wait in memory and are
    written after the reconnect, and the core tries to reconnect at most about
    twice a second (all its connections together), logging each outage once
    when it starts and once when it ends.
    """

    def __new__(cls, settings: CoreSettings) -> Core: ...
    def fileno(self) -> int:
        """A file descriptor that becomes readable when take() or logs() have
        something; it is also signalled when lost() gets new leases (always
        with a log line), so call lost() whenever it is readable."""
    def request(self, n: int) -> None:
        """Grant n more claim credits."""
    def pause(self) -> None:
        """Stop claiming for good (shutdown); reports keep flowing. A claim already
        under way may still deliver jobs, which the caller hands back."""
    def take(self) -> list[ClaimedJob]:
        """The jobs claimed since the last call, in claim order; resets fileno()."""
    def logs(self) -> list[tuple[str, str]]:
        """(level, message) lines the core wants logged since the last call."""
    def start(self, id: int, attempt: int) -> None:
        """Record that a claimed job was handed to a worker (claimed -> running).

        Report times (started_at here; completed_at, failed_at) are when the
        call was made, written as the database's now() minus how long ago
        that was, so they are on the database clock however late the flush."""
    def complete(self, id: int, attempt: int, result: bytes | None) -> None:
        """Record a success; result is the JSON-encoded return value. A result
        that cannot be stored (not UTF-8 JSON, a \\u0000 escape, which jsonb
        refuses, or over 1 MiB) fails the job instead, not retried, with
        forge.errors.ResultNotStorable saying why (and a log line).

        The lease of an ended job (complete, fail, release) stays held and
        renewed until its report is written."""
    def fail(self, id: int, attempt: int, retryable: bool, error: bytes, crashed: bool = False) -> None:
        """Record a failed attempt; error is a JSON object. crashed marks a
        crash-class ending (signal, OOM, os._exit, killed for a lost lease):
        it increments the job's crashes. Retried after the job type's backoff
        when retryable, attempts remain and crashes stay below max_crashes;
        when only the crash cap stops the retry (a poison pill) the job fails
        with "reason": "crashed N times (max_crashes M)" merged into error,
        counted in stats()["poisoned"]. Never raises for error's data: an
        error the database refuses (not JSON, a \\u0000 escape) is replaced,
        when written, by a ResultNotStorable failure saying so (see stats)."""
    def release(self, id: int, attempt: int) -> None:
        """Hand a claimed job back unrun: pending again, attempt not charged."""
    def progress(self, id: int, attempt: int, percent: int, message: str | None) -> None:
        """Record a running job's progress (only the latest per flush is written).
        Raises ValueError unless 0 <= percent <= 100."""
    def log(self, id: int, attempt: int, level: str, message: str, fields: bytes | None = None) -> None:
        """Queue a line of a running job's log (ctx.log), written to forge_job_logs in batches with the other
        reports, under the same lease guard as progress (a line of an attempt this node no longer holds is
        dropped). level is debug, info, warn or error (anything else is stored as info); fields is JSON.
        Never raises for the data: NUL characters become U+FFFD, a message or fields' JSON over 4 KiB is cut
        saying so (fields that are not JSON are stored as {"forge_invalid": text}), and a line the database
        refuses anyway is dropped (counted in refused), never its job failed. Only the first job_log_lines
        lines of an attempt are queued; the others are counted (stats log_dropped) and the attempt's end
        report is preceded by one more line (level warn, fields {"dropped": N}) saying how many (none when
        job_log_lines is 0: nothing is stored then). A line of an
        attempt not held here is counted as fenced."""
    def lease_age_ms(self) -> int:
        """Milliseconds since the last heartbeat round whose lease renewal was
        written was sent (on its own connection; a lease whose row another
        session has locked is skipped, not waited for); counted from the
        Core's start before the first round. Grows while the database is
        unreachable: the caller fences itself on it.

        Calling it is also the supervisor loop's proof of life, so call it
        every pass of the loop: once it has not been called for fence_after
        (a frozen loop, whose workers the zygote kills), the heartbeat renews
        only the leases of jobs whose end was reported, the age grows and
        other nodes rescue the running jobs (stat loop_unseen)."""
    def lost(self) -> list[tuple[int, int]]:
        """The (id, attempt) leases the heartbeat found lost (rescued or taken
        by another node), or gave up because another session kept their rows
        locked until they neared fence_after, since the last call. They are
        no longer held: not renewed again, not counted by in_flight(); a later
        report of them is fenced unless the row is still this node's lease."""
    def cancels(self) -> list[tuple[int, int]]:
        """The (id, attempt) jobs this node holds that an operator cancelled
        (forge.Jobs.cancel) since the last call, from the request's notice or,
        should that be missed, the next heartbeat renewal: stop each (kill its
        worker, or hand it back unstarted); the database records its end as
        cancelled. A job comes again at each renewal until its end is written."""
    def in_flight(self) -> int:
        """How many jobs this core holds leases for (an ended job's until its end is written)."""
    def flush(self, timeout_ms: int) -> bool:
        """Block (without the GIL) until every report made so far is written (those set aside
        for a locked row too); False on timeout."""
    def stats(self) -> dict[str, int]:
        """Counters: claimed, claims, started, completed, failed, retried, released,
        progress, logged, log_dropped, fenced, flushes, statements, heartbeats, lost, errors,
        poisoned, rescued, dead_lettered, pruned, pruned_completed,
        pruned_cancelled, pruned_discarded, unknown_failed, nodes_reaped,
        sweeps, connects, claims_closed, claims_pruned, refused, held,
        loop_unseen, cancelled, keys_released.

        poisoned counts this node's failures that the crash cap stopped from
        being retried (also counted in failed); cancelled, this node's ends
        (a fail or a release) of jobs an operator cancelled while it held them. rescued (started or only
        claimed, those uncharged), dead_lettered,
        pruned (dead letters), pruned_completed, pruned_cancelled,
        pruned_discarded ([retention]), keys_released ([retention] idempotency), unknown_failed
        and nodes_reaped count rows this node's
        maintenance sweeps changed; sweeps counts completed sweep rounds;
        connects counts connection attempts (all connections, the first ones
        included).

        started counts rows moved to running: a start reported in the same
        flush as the job's end is not sent (the end sets started_at), so it
        can be lower than the number of start() calls. fenced counts reports
        the lease guard rejected; lost counts held leases a heartbeat did not
        renew (each once). refused counts reports the database refused for
        their data (a trigger, a constraint, a value it cannot store): each
        is found by splitting its flush's statement, logged, and replaced by
        a failure of its job (ResultNotStorable, not retried), while the rest
        of the flush is written. held counts reports set aside because
        another session held their job's row locked past a short wait: they
        are tried again every 100 ms without waiting, the rest is written
        meanwhile, and flush() returns True only once they are written too.
        loop_unseen counts heartbeat rounds that renewed no running job's
        lease because lease_age_ms() had not been called for fence_after.
        While reports cannot be written at all the
        core claims nothing, and holds at most one progress report per job
        (the latest)."""
    def close(self) -> bool:
        """Flush what can be flushed (waiting up to 5 s), record the node's
        clean stop (True when that was written; False when the database could
        not be reached within 5 s), stop the runtime and close the connections.
        A second close() does nothing; any other method raises
        forge.errors.CoreError after close(), and in a process other than the
        creating one (a forked child)."""

def migrate(dsn: str, migrations: list[tuple[int, str, str, str]]) -> list[int]:
    """Apply the pending ones of `migrations`, given as (version, name, file name, SQL) in any order, in version
    order in one transaction under an advisory lock, each recorded in forge_migrations; the versions applied
    (empty when none were pending). The GIL is released meanwhile. Raises ConnectionError when the database cannot
    be reached, RuntimeError when a migration fails (naming its file; nothing was applied), and
    forge.errors.SchemaTooNew when the database has versions `migrations` lacks (nothing is applied)."""

def parse_sql(text: str, source: str) -> dict[str, str]:
    """The named statements of a `-- name:` SQL file's text (see forge.db.queries); ValueError naming `source`
    (and the line) on a duplicate name, a block without a name or one without a statement."""

def planner_options(connection: str) -> str:
    """The planner settings ("-c name=value ...") of the core's "claim", "main", "heartbeat" or "maintenance"
    connection, so a session running engine.sql by hand plans it as the core does; ValueError for another name."""
