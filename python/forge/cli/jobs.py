"""`forge jobs list|show|watch|retry|retry-all|discard|discard-all|cancel`: a thin layer over forge.Jobs.

Each command runs on one connection; a changing command is one transaction (forge.Jobs runs in the caller's):
when an id is unknown or in a state the command does not take, forge.Jobs raises (JobNotFound,
JobStateError: exit 1, the message naming the id and its state) and nothing is changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from forge.cli import output
from forge.cli.frame import config_option, connect, jobs_api, refuse
from forge.cli.options import STATUS, job_id, job_ids, since_option
from forge.config import Config
from forge.operations import Jobs

if TYPE_CHECKING:
    import psycopg

__all__ = ["jobs"]

#: The states a job does not leave by itself: `forge jobs watch` ends when its job reaches one.
ENDED = ("completed", "failed", "dead_letter", "discarded", "cancelled")
WATCH_INTERVAL = 0.5  # seconds between two reads of a watched job
_Command = TypeVar("_Command", bound=Callable[..., Any])
_BULK_STATUSES = click.Choice(["dead_letter", "failed"])
#: A job's times, in the order they happen; `jobs show` prints those set.
_TIMES = ("created_at", "scheduled_at", "claimed_at", "started_at", "heartbeat_at", "completed_at", "failed_at",
          "dead_lettered_at", "cancel_requested_at", "cancelled_at", "discarded_at")


def _get(conn: psycopg.Connection[Any], job_id: int) -> Any:
    record = jobs_api(conn).get(job_id)
    if record is None:
        refuse(f"job {job_id} not found")
    return record


@click.group()
def jobs() -> None:
    """Find, inspect, retry, discard and cancel jobs."""


@jobs.command("list")
@config_option
@click.option("--status", "statuses", type=STATUS, multiple=True, help="Only jobs in this status (repeatable).")
@click.option("--type", "job_types", metavar="TYPE", multiple=True, help="Only jobs of this type (repeatable).")
@since_option("were created")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs (forge_jobs columns).")
def list_jobs(config: Config | None, statuses: tuple[str, ...], job_types: tuple[str, ...],
              since: datetime | float | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    with connect(config, autocommit=True) as conn:
        found = jobs_api(conn).list(statuses=list(statuses) or None, job_types=list(job_types) or None,
                                since=since, limit=limit)
    if as_json:
        output.echo_json([output.job_json(record) for record in found])
        return
    output.table(None, ["id", "type", "status", "priority", "attempts", "created", "error"], [
        (job["id"], job["job_type"], job["status"], job["priority"], f"{job['attempts']}/{job['max_attempts']}",
         _moment(job["created_at"]), _error_line(job["last_error"]))
        for job in map(output.job_json, found)
    ])


@jobs.command("show")
@config_option
@click.argument("job_id", callback=job_id)
@click.option("--json", "as_json", is_flag=True,
              help="Print the job as a JSON object (forge_jobs columns, and its log lines under \"logs\").")
def show(config: Config | None, job_id: int, as_json: bool) -> None:
    """Show one job: type, status, priority, attempts, times, node, input, result, last error with its
    traceback, progress, and its log lines (ctx.log, every attempt's)."""
    with connect(config, autocommit=True) as conn:
        job = output.job_json(_get(conn, job_id))
        logs: list[dict[str, Any]] = msgspec.to_builtins(jobs_api(conn).logs(job_id))
    if as_json:
        output.echo_json({**job, "logs": logs})
        return
    click.echo(f"job {job['id']}  {job['job_type']}  {job['status']}  priority {job['priority']}")
    _field("attempts", f"{job['attempts']}/{job['max_attempts']} (crashes {job['crashes']})")
    for column in _TIMES:
        if job.get(column):
            _field(column.removesuffix("_at"), _moment(job[column]))
    if job.get("claimed_by"):
        _field("node", job["claimed_by"])
    _field("progress", f"{job['progress']}%" + (f" {job['progress_message']}" if job["progress_message"] else ""))
    _field("input", _compact(job["input"]))
    if job.get("result") is not None:
        _field("result", _compact(job["result"]))
    if error := job.get("last_error"):
        attempt = f" (attempt {error['attempt']})" if "attempt" in error else ""
        _field("last error", _error_line(error) + attempt)
        if error.get("traceback"):
            click.echo(str(error["traceback"]).rstrip())
    if logs:
        click.echo(f"logs ({len(logs)})")
    for line in logs:
        fields = f"  {_compact(line['fields'])}" if line["fields"] is not None else ""
        click.echo(f"  {_moment(line['at'])}  attempt {line['attempt']}  {line['level']:<5}  {line['message']}{fields}")


def _field(label: str, value: str) -> None:
    click.echo(f"{label:<14} {value}")


@jobs.command()
@config_option
@click.argument("job_id", callback=job_id)
@click.option("--json", "as_json", is_flag=True, help="Print the job as a JSON object on one line (forge_jobs "
              "columns, as show --json) at first, at each change of its status, attempt or progress, and when it ends.")
def watch(config: Config | None, job_id: int, as_json: bool) -> None:
    """Show a job's progress (percent and message) until it ends: exit 0 if it completed, 1 otherwise."""
    with connect(config, autocommit=True) as conn:
        job = (_watch_json if as_json else _watch_bar)(conn, job_id)
    if job["status"] != "completed":
        refuse(f"job {job_id} ended {job['status']}" + (f": {_error_line(e)}" if (e := job["last_error"]) else ""))


def _readings(conn: psycopg.Connection[Any], job_id: int) -> Iterator[dict[str, Any]]:
    """The job's JSON object every WATCH_INTERVAL, until one in an ENDED state (the last one yielded)."""
    while True:
        job = output.job_json(_get(conn, job_id))
        yield job
        if job["status"] in ENDED:
            return
        time.sleep(WATCH_INTERVAL)


def _watch_bar(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    """Watch with a progress bar; the ended job."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    columns = (TextColumn("job {task.fields[job]} {task.fields[status]}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=output.console()) as bar:
        task = bar.add_task("", total=100, job=job_id, status="")
        for job in _readings(conn, job_id):
            bar.update(task, completed=job["progress"], description=job["progress_message"] or "",
                       status=job["status"])
    return job


def _watch_json(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    """Watch as JSON lines: the job when first read and whenever what a watcher follows changed (not at each
    lease renewal, which changes only heartbeat_at); the ended job is always the last line."""
    shown = None
    for job in _readings(conn, job_id):
        seen = (job["status"], job["attempts"], job["progress"], job["progress_message"])
        if seen != shown:
            output.echo_json_line(job)
            shown = seen
    return job


@jobs.command()
@config_option
@click.argument("job_ids", metavar="ID...", callback=job_ids, nargs=-1, required=True)
@click.option("--attempts", type=click.IntRange(min=1), help="Attempts it gets (default: its policy's max_attempts).")
def retry(config: Config | None, job_ids: tuple[int, ...], attempts: int | None) -> None:
    """Send dead_letter, failed, discarded or cancelled jobs back to pending, due now; they keep their history.
    All or none: an unknown id or a job in another state changes nothing (exit 1)."""
    with connect(config) as conn:
        jobs_api(conn).retry(*job_ids, attempts=attempts)
    click.echo(f"retried {_jobs(job_ids)}")


def _bulk_options(command: _Command) -> _Command:
    """The options of retry-all and discard-all: the failed jobs they take (--type, --status, --since) and
    --dry-run."""
    for option in reversed((
        config_option,
        click.option("--type", "job_type", metavar="TYPE", required=True, help="The job type."),
        click.option("--status", type=_BULK_STATUSES, default="dead_letter", show_default=True),
        since_option("failed"),
        click.option("--dry-run", is_flag=True, help="Only count them."),
    )):
        command = option(command)
    return command


def _change_all(config: Config | None, change: Callable[..., int], verb: str, done: str, job_type: str,
                status: str, since: datetime | float | None, dry_run: bool) -> None:
    """Run forge.Jobs' bulk method `change` (Jobs.retry_all, Jobs.discard_all) in one transaction; print how
    many it changed (`done`), or with --dry-run how many it would (`verb`)."""
    with connect(config) as conn:
        count = change(jobs_api(conn), job_type, status=status, since=since, dry_run=dry_run)
    click.echo(f"{f'would {verb}' if dry_run else done} {count} {status} {job_type} job(s)")


@jobs.command("retry-all")
@_bulk_options
def retry_all(config: Config | None, job_type: str, status: str, since: datetime | float | None,
              dry_run: bool) -> None:
    """Retry every job of a type in a status (done in the database, in batches); print how many."""
    _change_all(config, Jobs.retry_all, "retry", "retried", job_type, status, since, dry_run)


@jobs.command()
@config_option
@click.argument("job_ids", metavar="ID...", callback=job_ids, nargs=-1, required=True)
def discard(config: Config | None, job_ids: tuple[int, ...]) -> None:
    """Give failed or dead_letter jobs up for good (discarded, kept for inspection until their retention).
    All or none, as for retry."""
    with connect(config) as conn:
        jobs_api(conn).discard(*job_ids)
    click.echo(f"discarded {_jobs(job_ids)}")


@jobs.command("discard-all")
@_bulk_options
def discard_all(config: Config | None, job_type: str, status: str, since: datetime | float | None,
                dry_run: bool) -> None:
    """Discard every job of a type in a status; print how many."""
    _change_all(config, Jobs.discard_all, "discard", "discarded", job_type, status, since, dry_run)


@jobs.command()
@config_option
@click.argument("job_ids", metavar="ID...", callback=job_ids, nargs=-1, required=True)
def cancel(config: Config | None, job_ids: tuple[int, ...]) -> None:
    """Cancel jobs: pending or retry ones become cancelled at once and are never claimed; a claimed or running
    one is stopped by the node holding it (its worker killed), then recorded cancelled, never retried. All or
    none, as for retry: an unknown or ended id changes nothing (exit 1)."""
    with connect(config) as conn:
        jobs_api(conn).cancel(*job_ids)
    click.echo(f"cancelled {_jobs(job_ids)}")


def _jobs(job_ids: Sequence[int]) -> str:
    return f"job {job_ids[0]}" if len(job_ids) == 1 else f"{len(job_ids)} jobs: {', '.join(map(str, job_ids))}"


def _moment(iso: str | None) -> str:
    """An ISO time of the JSON view, shown to the second in UTC."""
    return output.when(None if iso is None else datetime.fromisoformat(iso))


def _compact(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('type', 'error')}: {error.get('message', '')}".strip()
