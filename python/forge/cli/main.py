"""The `forge` command: operations on a Forge database, configured by forge.toml.

Exit codes: 0 success; 1 a database problem (DatabaseError); 2 a bad
config file or bad command line (ConfigError, usage errors); 3 a database
whose schema is newer than this Forge (SchemaTooNew); each with a one-line
message on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from forge.config import Config, embedded_postgres, load_config
from forge.errors import ConfigError, DatabaseError, SchemaTooNew

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
    """The database URL for a command; starts the embedded cluster if needed and stops it afterwards if it did."""
    if url := config.database_url():
        yield url
        return
    embedded = embedded_postgres(config)
    was_running = embedded.running()
    url = embedded.start()
    try:
        yield url
    finally:
        if not was_running:
            embedded.stop()


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


def main() -> None:
    """Entry point of the `forge` script."""
    cli(prog_name="forge")


if __name__ == "__main__":
    main()
