"""`forge queues pause|resume|list`: pausing job types on every node (forge.Jobs), and the types at a glance.

A pause is a row in the database: it holds on every node and across restarts; running jobs finish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from forge.cli import output
from forge.cli.frame import config_option, connect, jobs_api, node_settings
from forge.config import Config
from forge.operations import Jobs
from forge.status import STATUSES, known_job_types, read_status

if TYPE_CHECKING:
    import psycopg

__all__ = ["queues"]

_Command = TypeVar("_Command", bound=Callable[..., Any])


@click.group()
def queues() -> None:
    """Pause and resume job types (a queue is a job type); list them."""


def _switch_options(every_help: str) -> Callable[[_Command], _Command]:
    """The arguments of pause and resume: job types, or --all (`every_help` says which)."""
    def wrap(command: _Command) -> _Command:
        command = click.option("--all", "every", is_flag=True, help=every_help)(command)
        command = click.argument("job_types", metavar="TYPE...", nargs=-1)(command)
        return config_option(command)  # type: ignore[no-any-return]
    return wrap


def _switch(config: Config | None, job_types: tuple[str, ...], every: bool, *, change: Callable[..., Any],
            every_type: Callable[[psycopg.Connection[Any], Jobs], list[str]], done: str, none: str) -> None:
    """Pause or resume (`change`: Jobs.pause, Jobs.resume) `job_types`, or with --all the `every_type` ones, in
    one transaction; print the types, `done`, or `none` when --all found none."""
    if bool(job_types) == every:
        raise click.UsageError(f"give job types or --all, not {'both' if every else 'neither'}")
    with connect(config) as conn:
        api = jobs_api(conn)
        chosen = every_type(conn, api) if every else list(job_types)
        if chosen:
            change(api, *chosen)
    click.echo(f"{done} {', '.join(chosen) or f'nothing ({none})'}")


@queues.command()
@_switch_options("Every type a node runs or a job waits in.")
def pause(config: Config | None, job_types: tuple[str, ...], every: bool) -> None:
    """Stop every node claiming jobs of these types (within a second); running jobs finish."""
    _switch(config, job_types, every, change=Jobs.pause, every_type=lambda conn, api: known_job_types(conn),
            done="paused", none="no job type known")


@queues.command()
@_switch_options("Every paused type.")
def resume(config: Config | None, job_types: tuple[str, ...], every: bool) -> None:
    """Let nodes claim jobs of these types again (within a second)."""
    _switch(config, job_types, every, change=Jobs.resume, every_type=lambda conn, api: api.paused(),
            done="resumed", none="no job type paused")


@queues.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: job_type, paused, nodes, by_status.")
def list_queues(config: Config | None, as_json: bool) -> None:
    """The job types: paused or not, how many live nodes run each, their jobs by status (~: estimated)."""
    with connect(config, autocommit=True) as conn:
        found = read_status(conn, heartbeat_timeout=node_settings(config).heartbeat_timeout)
    runners: dict[str, int] = {}
    for node in found.nodes:
        for job_type in node.job_types:
            runners[job_type] = runners.get(job_type, 0) + 1
    names = sorted({*found.by_type, *found.paused, *runners})
    rows: list[dict[str, Any]] = [
        {"job_type": name, "paused": name in found.paused, "nodes": runners.get(name, 0),
         "by_status": found.by_type.get(name, {})}
        for name in names
    ]
    if as_json:
        output.echo_json(rows)
        return
    shown = [s for s in STATUSES if any(row["by_status"].get(s) for row in rows)]
    output.table(None, ["type", "paused", "nodes", *shown], [
        (row["job_type"], "paused" if row["paused"] else "", row["nodes"],
         *(output.count(row["by_status"].get(s, 0), s in found.estimated) for s in shown))
        for row in rows
    ])
