"""`forge dispatch TYPE --input JSON`: one job, from the command line, through forge.dispatch.

The app's [app] modules are imported, as the supervisor does, so the input is checked against the job's own
input type. Every refusal names what is wrong and exits 2 (it is the command line that is wrong: bad JSON, an
input that does not match, an unknown type, a bad --delay), with nothing inserted; an app that cannot be
imported exits 2 too, as a configuration error. The new job's id is printed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

import forge
from forge.cli.frame import EXIT_CONFIG, config_option, connect, refuse, require_config
from forge.cli.options import moment
from forge.config import Config, import_app_modules
from forge.errors import ConfigError
from forge.job import PRIORITIES, Job, registry

__all__ = ["dispatch"]


@click.command()
@config_option
@click.argument("job_type", metavar="TYPE")
@click.option("--input", "input_json", metavar="JSON", default="null", show_default=True,
              help="The job's input, as JSON.")
@click.option("--at", callback=moment, metavar="ISO-TIME",
              help="Due no earlier than this ISO 8601 time (local time without an offset).")
@click.option("--delay", metavar="DURATION", help="Due after this long (10m, 1h).")
@click.option("--priority", type=click.Choice(list(PRIORITIES)), help="Instead of the job's own.")
def dispatch(config: Config | None, job_type: str, input_json: str, at: datetime | None, delay: str | None,
             priority: str | None) -> None:
    """Dispatch one job of type TYPE, checked against its input type; print its id."""
    definition = _job(require_config(config, "forge dispatch"), job_type)
    try:
        value = json.loads(input_json)
    except ValueError as exc:
        refuse(f"--input is not valid JSON ({exc}): {input_json!r}", EXIT_CONFIG)
    with connect(config) as conn:
        job_id = forge.dispatch(conn, definition, value, at=at, delay=delay, priority=priority)
    click.echo(job_id)


def _job(config: Config, job_type: str) -> Job[Any]:
    try:
        import_app_modules(config)
    except ConfigError:
        raise
    except Exception as exc:  # the app's own import failed: say so in one line, as for any config problem
        raise ConfigError(f"cannot import the app's job modules {config.app.modules}: "
                          f"{type(exc).__name__}: {exc}") from exc
    jobs = registry()
    if job_type not in jobs:
        known = ", ".join(sorted(jobs)) or "none"
        refuse(f"no job type {job_type!r} in {', '.join(config.app.modules)} (known: {known})", EXIT_CONFIG)
    return jobs[job_type]
