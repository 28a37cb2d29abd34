"""`forge migrate` and `forge db start|stop|status|url`: the schema, and the embedded PostgreSQL.

`forge db` manages the embedded PostgreSQL (no database url configured),
which outlives whoever started it; `forge db stop` refuses while a
forge-supervisor or another forge command uses it.
"""

from __future__ import annotations

import click

from forge.cli.frame import config_option, database_url, refuse
from forge.config import DATABASE_URL_ENV, Config, embedded_postgres
from forge.db.embedded import EmbeddedPostgres
from forge.errors import ConfigError

__all__ = ["db", "migrate"]


@click.command()
@config_option
def migrate(config: Config | None) -> None:
    """Apply pending schema migrations (safe to run any time, from anywhere)."""
    from forge.db.migrate import migrate as apply_migrations

    with database_url(config) as url:
        applied = apply_migrations(url)
    if applied:
        click.echo(f"applied migrations: {', '.join(f'{v:04d}' for v in applied)}")
    else:
        click.echo("database schema is up to date")


@click.group()
def db() -> None:
    """The embedded PostgreSQL under .forge/postgres beside forge.toml (no database url configured).

    It outlives whoever started it (forge-supervisor, forge migrate, forge db
    start), and keeps its port; only `forge db stop` stops it.
    """


def _embedded(config: Config | None) -> EmbeddedPostgres:
    """The embedded cluster of `config`'s folder; ConfigError if a database url is configured instead."""
    if config is None or config.database_url():
        where = "" if config is None else f" or [database] url in {config.path}"
        raise ConfigError(
            f"forge db manages the embedded PostgreSQL only, but a database url is configured (${DATABASE_URL_ENV}"
            f"{where})"
        )
    return embedded_postgres(config)


@db.command("start")
@config_option
def db_start(config: Config | None) -> None:
    """Start the embedded PostgreSQL unless it runs (initdb first if needed); print its URL."""
    click.echo(_embedded(config).start())


@db.command("stop")
@config_option
def db_stop(config: Config | None) -> None:
    """Stop the embedded PostgreSQL; refused (exit 1) while a forge-supervisor or forge command uses it."""
    _embedded(config).stop()
    click.echo("stopped")


@db.command("status")
@config_option
def db_status(config: Config | None) -> None:
    """Print `running at <url>` (`, in use` while a supervisor or command uses it) or `stopped`."""
    cluster = _embedded(config)
    if (url := cluster.url) is None:
        click.echo("stopped")
    else:
        click.echo(f"running at {url}" + (", in use" if cluster.in_use() else ""))


@db.command("url")
@config_option
def db_url(config: Config | None) -> None:
    """Print the URL of the running embedded PostgreSQL, for an app or psql (`psql "$(forge db url)"`); exit 1
    if it is not running."""
    cluster = _embedded(config)
    if (url := cluster.url) is None:
        refuse(f"the embedded PostgreSQL at {cluster.data_dir} is not running: start it with forge db start")
    click.echo(url)
