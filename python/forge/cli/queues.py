"""`forge queues pause|resume|list`: pausing job types on every node (forge.Jobs), and the types at a glance.

A pause is a row in the database: it holds on every node and across restarts; running jobs finish.
"""

from __future__ import annotations

from typing import Any

import click

from forge.cli import output
from forge.cli.frame import config_option, connect, jobs_api, node_settings
from forge.config import Config
from forge.status import STATUSES, known_job_types, read_status

__all__ = ["queues"]


@click.group()
def queues() -> None:
    """Pause and resume job types (a queue is a job type); list them."""


def _chosen(types: tuple[str, ...], every: bool) -> None:
    if bool(types) == every:
        raise click.UsageError(f"give job types or --all, not {'both' if every else 'neither'}")


@queues.command()
@config_option
@click.argument("job_types", metavar="TYPE...", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every type a node runs or a job waits in.")
def pause(config: Config | None, job_types: tuple[str, ...], every: bool) -> None:
    """Stop every node claiming jobs of these types (within a second); running jobs finish."""
    _chosen(job_types, every)
    with connect(config) as conn:
        chosen = known_job_types(conn) if every else list(job_types)
        api = jobs_api(conn)
        for job_type in chosen:
            api.pause(job_type)
    click.echo(f"paused {', '.join(chosen) or 'nothing (no job type known)'}")


@queues.command()
@config_option
@click.argument("job_types", metavar="TYPE...", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every paused type.")
def resume(config: Config | None, job_types: tuple[str, ...], every: bool) -> None:
    """Let nodes claim jobs of these types again (within a second)."""
    _chosen(job_types, every)
    with connect(config) as conn:
        api = jobs_api(conn)
        chosen = list(api.paused()) if every else list(job_types)
        for job_type in chosen:
            api.resume(job_type)
    click.echo(f"resumed {', '.join(chosen) or 'nothing (no job type paused)'}")


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
