"""`forge status`: the queue at a glance (forge/status.py reads it; this prints it)."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from forge.cli import output
from forge.cli.frame import config_option, connect, node_settings
from forge.config import Config
from forge.job import PRIORITIES
from forge.status import STATUSES, QueueStatus, read_status

__all__ = ["status"]


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: by_status, by_type, by_priority, "
              "oldest_pending_seconds, paused, nodes, estimated, unschedulable.")
def status(config: Config | None, as_json: bool) -> None:
    """Counts by status, type and priority; how long the oldest due job of each type has waited; paused types;
    the nodes alive; the waiting jobs that need a worker capability no live node has.

    The live states are counted exactly; on a big table, completed jobs (and cancelled or discarded ones that
    never failed) are counted on a sample of its pages, shown with ~ (JSON: listed in `estimated`).
    """
    with connect(config, autocommit=True) as conn:
        found = read_status(conn, heartbeat_timeout=node_settings(config).heartbeat_timeout)
    if as_json:
        output.echo_json(found)
    else:
        _show(found)


def _show(found: QueueStatus) -> None:
    shown = [s for s in STATUSES if found.by_status.get(s)] or ["pending"]

    def count(counts: dict[str, int], state: str) -> str:
        return output.count(counts.get(state, 0), state in found.estimated)

    output.table("Jobs by status", ["status", "count"], [(s, count(found.by_status, s)) for s in STATUSES])
    output.table("By type", ["type", *shown, "oldest due"], [
        (job_type, *(count(counts, s) for s in shown), _waited(found, job_type))
        for job_type, counts in sorted(found.by_type.items())
    ])
    output.table("By priority", ["priority", *shown], [
        (name, *(count(found.by_priority[name], s) for s in shown))
        for name in PRIORITIES if name in found.by_priority
    ])
    click.echo(f"Paused: {', '.join(found.paused) if found.paused else 'none'}")
    for stuck in found.unschedulable:
        click.echo(f"{stuck.pending} pending {stuck.job_type} jobs: no live node has capability {stuck.capability}")
    if not found.nodes:
        click.echo("Nodes alive: none")
        return
    now = datetime.now(timezone.utc)
    output.table("Nodes alive", ["host", "pid", "workers", "busy", "claimed", "capabilities", "job types",
                                 "last heartbeat"], [
        (node.hostname, node.pid, node.workers, node.busy, node.claimed, ", ".join(node.capabilities),
         ", ".join(node.job_types), f"{output.age((now - node.heartbeat_at).total_seconds())} ago")
        for node in found.nodes
    ])


def _waited(found: QueueStatus, job_type: str) -> str:
    seconds = found.oldest_pending_seconds.get(job_type)
    return "" if seconds is None else output.age(seconds)
