"""forge-supervisor: the job engine of one node.

Start-up order matters for fork safety: the app is imported and the zygote
forked while this process is still single-threaded; only then are the
database reached and the Rust core (which runs a thread) started. Without a
database url, the embedded cluster is started if it is not running, kept up
while the node runs (a thread restarts it if it dies: db/embedded_watch.py)
and left running at the stop: `forge db stop` stops it.

Exit status: 0 after a clean stop, 2 for a bad configuration, 3 when the
app's job modules cannot be imported, 4 when the database cannot be reached
or migrated (a boot failure therefore stops instead of crash-looping), 5 when
a stop left job outcomes the database did not take within shutdown_grace
(those jobs stay held until another node rescues them after heartbeat_timeout),
6 when the database's schema is newer than this Forge (SchemaTooNew); on the
embedded default, 7 when the PostgreSQL binaries are not found
(PostgresNotInstalled) and 8 when run as root with no `postgres` user (or
$FORGE_PG_USER) to run PostgreSQL as (NoServiceUser): the machine needs fixing,
not the database.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import uuid
from typing import Any

import click

from .. import logs
from .._core import Core, CoreSettings, JobPolicy
from ..config import Config, NodeConfig, RetentionConfig, embedded_postgres, import_app_modules, load_config
from ..config_lookup import config_path_option
from ..db.embedded_watch import kept_up
from ..db.migrate import migrate
from ..db.where import where
from ..errors import ConfigError, DatabaseError, NoServiceUser, PostgresNotInstalled, SchemaTooNew
from ..job import Job, registry
from ..retry import Retry
from ..version import version, version_option
from . import log_queue, machine
from .arbiter import Arbiter
from .capacity import Admission, Capacity, Request, never_fits, requests_of
from .lease import LeaseClock, fence_after
from .machine import MemoryCgroups
from .protocol import WorkerSettings
from .zygote import Zygote

EXIT_CONFIG = 2
EXIT_APP = 3
EXIT_DATABASE = 4
EXIT_OUTCOMES_UNWRITTEN = 5
EXIT_SCHEMA_TOO_NEW = 6
EXIT_NO_POSTGRES = 7
EXIT_NO_SERVICE_USER = 8
#: The least a stop waits for its final reports (seconds): a healthy database takes them in milliseconds, but not
#: in no time at all, as shutdown_grace = 0 would give it.
FINAL_FLUSH_MIN = 1.0

_log = logging.getLogger("forge.supervisor")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_path_option("config_path", help="The forge.toml to use (else $FORGE_CONFIG), as for the forge command.")
@version_option("forge-supervisor")
def main(config_path: str) -> None:
    """Run Forge's supervisor: claim due jobs and run them in forked worker processes."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"forge-supervisor: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.configure(config.log.level, config.log.format)
    try:
        import_app_modules(config)
    except ConfigError as exc:
        click.echo(f"forge-supervisor: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except Exception as exc:
        _log.exception("cannot import the app's job modules: %s", exc)
        sys.exit(EXIT_APP)
    jobs = dict(registry())
    _banner(config, jobs)
    capacity = machine.capacity(config.node)
    sys.exit(run(config, jobs, Admission(capacity, fitting(jobs, capacity), config.node.prefetch)))


def _banner(config: Config, jobs: dict[str, Job[Any]]) -> None:
    """What this node is, first in its log: the version, the config it read and what it runs."""
    _log.info(
        "Forge %s, config %s: workers %d, capabilities %s, job types %s",
        version(),
        config.path,
        config.node.workers,
        ", ".join(config.node.worker_capabilities) or "(none)",
        ", ".join(sorted(jobs)) or "(none)",
    )


def fitting(jobs: dict[str, Job[Any]], capacity: Capacity) -> dict[str, Request]:
    """The requests of the job types that ask for resources. Those that ask for more than the whole node has are
    taken out of `jobs`: never claimed here (the core claims only the types it is given; the log says so), so
    none waits here for ever nor goes back and forth."""
    _log.info("capacity: cpus %d (on CPUs %s), memory %d bytes, gpus %s", capacity.cpus,
              ",".join(map(str, capacity.cores)), capacity.memory, ",".join(capacity.gpus) or "(none)")
    requests = requests_of(jobs.items())
    for name, request in list(requests.items()):
        if (over := never_fits(request, capacity)) is not None:
            _log.warning("job type %s is unschedulable on this node: it asks for more than the node has (%s); "
                       "this node does not claim it", name, over)
            del jobs[name], requests[name]
    return requests


def run(config: Config, jobs: dict[str, Job[Any]], admission: Admission) -> int:
    """Boot the node, run the arbiter until stopped, tear down; the exit status."""
    # Only if a job asks for memory: the node's memory cgroup, removed after the zygote, once the workers are gone.
    cgroups = MemoryCgroups.make() if any(r.memory for r in admission.requests.values()) else MemoryCgroups(None)
    lease = LeaseClock()
    zygote = Zygote.start(lease, fence_after(config.node.heartbeat_timeout), cgroups.remove)
    # Only now, with the zygote forked, the log queue's thread: neither the zygote nor its workers may inherit it.
    queued_logs = log_queue.start()
    try:
        with contextlib.ExitStack() as database:
            try:
                dsn = config.database_url() or database.enter_context(kept_up(embedded_postgres(config)))
                _log_database(config, dsn)
                applied = migrate(dsn)
                if applied:
                    _log.info("applied migrations %s", applied)
            except SchemaTooNew as exc:
                _log.error("%s", exc)
                return EXIT_SCHEMA_TOO_NEW
            except PostgresNotInstalled as exc:
                _log.error("%s", exc)
                return EXIT_NO_POSTGRES
            except NoServiceUser as exc:
                _log.error("%s", exc)
                return EXIT_NO_SERVICE_USER
            except (DatabaseError, ConfigError) as exc:
                _log.error("%s", exc)
                return EXIT_DATABASE
            return _serve(config, jobs, zygote, lease, dsn, admission, cgroups)
    finally:
        zygote.stop()
        cgroups.remove()
        log_queue.stop(queued_logs)


def _log_database(config: Config, dsn: str) -> None:
    """Where the node's database is: host:port/dbname (never credentials), or the embedded cluster's whole URL
    (it has none), which `forge db url` prints too."""
    if config.database_url():
        _log.info("database %s", where(dsn))
    else:
        _log.info("database: embedded PostgreSQL at %s, %s", config.embedded_dir, dsn)


def _serve(config: Config, jobs: dict[str, Job[Any]], zygote: Zygote, lease: LeaseClock, dsn: str,
           admission: Admission, cgroups: MemoryCgroups) -> int:
    node_id = uuid.uuid4()  # new at every start: the lease owner of this run's claims
    try:
        core = Core(core_settings(config.node, dsn, node_id, jobs, config.retention))
    except (ConnectionError, RuntimeError) as exc:  # unreachable, or the registration refused
        _log.error("cannot start the core on the database: %s", exc)
        return EXIT_DATABASE
    settings = WorkerSettings(
        dsn=dsn,
        max_jobs=config.node.max_jobs_per_worker,
        max_memory=config.node.max_worker_memory,
        log_level=config.log.level,
        owner=str(node_id),
        memory_cgroup=None if cgroups.base is None else str(cgroups.base),
        gpu_node=bool(config.node.gpus),
    )
    _log.info("node %s started", node_id)
    try:
        status = Arbiter(config.node, core, zygote, jobs, settings, lease, admission, cgroups).run()
    finally:
        left = _final_flush(core, config.node.shutdown_grace)
        _log.info("core totals: %s", " ".join(f"{k}={v}" for k, v in sorted(core.stats().items())))
        if not core.close():
            _log.warning("node %s: could not record the stop (database unreachable)", node_id)
    if left:
        _log.error(
            "node %s stopped with %d job outcome(s) not written (database unreachable for shutdown_grace %gs); "
            "their jobs stay held, left to the rescue by a live node after heartbeat_timeout (%gs)",
            node_id, left, config.node.shutdown_grace, config.node.heartbeat_timeout,
        )
        return EXIT_OUTCOMES_UNWRITTEN
    _log.info("node %s stopped", node_id)
    return status


def _final_flush(core: Core, grace: float) -> int:
    """Wait up to `grace` seconds for the database to take every report; how many jobs it leaves held: those
    whose outcome it did not take (a lease is held until its job's end is written) or never reported ended."""
    core.flush(int(max(grace, FINAL_FLUSH_MIN) * 1000))
    return core.in_flight()


def core_settings(
    node: NodeConfig, dsn: str, node_id: uuid.UUID, jobs: dict[str, Job[Any]],
    retention: RetentionConfig | None = None,
) -> CoreSettings:
    """The Rust core's settings for this run: [node] and [retention] (its defaults when None) as validated by
    config.py, the only place of their defaults."""
    retention = RetentionConfig() if retention is None else retention
    return CoreSettings(
        dsn=dsn,
        owner=str(node_id),
        hostname=socket.gethostname(),
        roles=list(node.roles),
        workers=node.workers,
        capabilities=list(node.worker_capabilities),
        policies=[policy(name, job.retry) for name, job in jobs.items()],
        default_policy=policy("", Retry()),
        claim_batch=node.claim_batch,
        poll_interval=node.poll_interval,
        heartbeat_interval=node.heartbeat_interval,
        heartbeat_timeout=node.heartbeat_timeout,
        fence_after=fence_after(node.heartbeat_timeout),
        max_crashes=node.max_crashes,
        maintenance_interval=node.maintenance_interval,
        dead_letter_after=node.dead_letter_after,
        dead_letter_retain=node.dead_letter_retain,
        unknown_type_grace=node.unknown_type_grace,
        retain_completed=retention.completed,
        retain_cancelled=retention.cancelled,
        retain_discarded=retention.discarded,
        retain_idempotency=retention.idempotency,
        job_log_lines=node.job_log_lines,
    )


def policy(job_type: str, retry: Retry) -> JobPolicy:
    """The Rust core's view of a retry policy: its backoff in milliseconds."""
    cap = None if retry.max_backoff is None else retry.max_backoff * 1000
    return JobPolicy(job_type, retry.backoff, retry.base * 1000, cap, retry.jitter)
