"""The `forge` command: operations on a Forge database, configured by forge.toml.

`forge db start|stop|status` manage the embedded PostgreSQL (no database url
configured), which outlives whoever started it; `forge db stop` refuses
while a forge-supervisor or another forge command uses it.

Exit codes: 0 success; 1 a database problem (DatabaseError, also a refused
`forge db stop`); 2 a bad
config file or bad command line (ConfigError, usage errors); 3 a database
whose schema is newer than this Forge (SchemaTooNew); each with a one-line
message on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from forge.config import DATABASE_URL_ENV, Config, embedded_postgres, load_config
from forge.errors import ConfigError, DatabaseError, SchemaTooNew

if TYPE_CHECKING:
    from forge.db.embedded import EmbeddedPostgres

__all__ = ["cli", "config_option", "database_url", "main"]

EXIT_DATABASE = 1
EXIT_CONFIG = 2
EXIT_SCHEMA_TOO_NEW = 3


class _ForgeGroup(click.Group):
    """A click group that turns Forge's errors into a message and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"forge: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)
        except SchemaTooNew as exc:
            click.echo(f"forge: {exc}", err=True)
            ctx.exit(EXIT_SCHEMA_TOO_NEW)
        except DatabaseError as exc:
            click.echo(f"forge: {exc}", err=True)
            ctx.exit(EXIT_DATABASE)


def config_option(func: Any) -> Any:
    """-c/--config PATH (default ./forge.toml, or $FORGE_CONFIG), passed on as a loaded Config `config`."""

    def load(ctx: click.Context, param: click.Parameter, value: str) -> Config:
        return load_config(value)

    return click.option(
        "-c", "--config", "config", default="forge.toml", envvar="FORGE_CONFIG", show_default=True,
        metavar="PATH", callback=load, help="The forge.toml to use.",
    )(func)


@contextlib.contextmanager
def database_url(config: Config) -> Iterator[str]:
    """The database URL for a command; the embedded cluster is started if needed, used while inside (so
    `forge db stop` refuses meanwhile) and left running: it outlives whoever started it."""
    if url := config.database_url():
        yield url
        return
    embedded = embedded_postgres(config)
    with embedded.used():
        yield embedded.start()


@click.group(cls=_ForgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Forge: durable background jobs for Python on PostgreSQL.

    The database is $FORGE_DATABASE_URL, else [database] url in forge.toml,
    else an embedded PostgreSQL under .forge/postgres beside forge.toml.
    """


@cli.command()
@config_option
def migrate(config: Config) -> None:
    """Apply pending schema migrations (safe to run any time, from anywhere)."""
    from forge.db.migrate import migrate as apply_migrations

    with database_url(config) as url:
        applied = apply_migrations(url)
    if applied:
        click.echo(f"applied migrations: {', '.join(f'{v:04d}' for v in applied)}")
    else:
        click.echo("database schema is up to date")


@cli.group()
def db() -> None:
    """The embedded PostgreSQL under .forge/postgres beside forge.toml (no database url configured).

    It outlives whoever started it (forge-supervisor, forge migrate, forge db
    start), and keeps its port; only `forge db stop` stops it.
    """


def _embedded(config: Config) -> EmbeddedPostgres:
    """The embedded cluster of `config`'s folder; ConfigError if a database url is configured instead."""
    if config.database_url():
        raise ConfigError(
            "forge db manages the embedded PostgreSQL only, but a database url is configured "
            f"(${DATABASE_URL_ENV} or [database] url in {config.path})"
        )
    return embedded_postgres(config)


@db.command("start")
@config_option
def db_start(config: Config) -> None:
    """Start the embedded PostgreSQL unless it runs (initdb first if needed); print its URL."""
    click.echo(_embedded(config).start())


@db.command("stop")
@config_option
def db_stop(config: Config) -> None:
    """Stop the embedded PostgreSQL; refused (exit 1) while a forge-supervisor or forge command uses it."""
    _embedded(config).stop()
    click.echo("stopped")


@db.command("status")
@config_option
def db_status(config: Config) -> None:
    """Print `running at <url>` (`, in use` while a supervisor or command uses it) or `stopped`."""
    cluster = _embedded(config)
    if (url := cluster.url) is None:
        click.echo("stopped")
    else:
        click.echo(f"running at {url}" + (", in use" if cluster.in_use() else ""))


def main() -> None:
    """Entry point of the `forge` script."""
    cli(prog_name="forge")


if __name__ == "__main__":
    main()
