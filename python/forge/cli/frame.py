"""What every `forge` command shares: finding the config and the database, connecting, and exit statuses.

A command reads `-c PATH` (default ./forge.toml, or $FORGE_CONFIG); with
$FORGE_DATABASE_URL set, the default forge.toml may be missing, as commands
that only read or change rows need no app (`forge dispatch` does). Exit
statuses, each with a one-line message on stderr: 0 success; 1 not found,
wrong state, or the database unreachable or refusing; 2 a bad command line or
config file; 3 a database schema newer than this Forge.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from forge.config import DATABASE_URL_ENV, Config, NodeConfig, embedded_postgres, load_config
from forge.config_lookup import config_path_option
from forge.db.where import where
from forge.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    import psycopg

    from forge.operations import Jobs

__all__ = [
    "EXIT_CONFIG", "EXIT_REFUSED", "EXIT_SCHEMA_TOO_NEW", "config_option", "connect", "database_url", "jobs_api",
    "node_settings", "one_line", "refuse", "require_config",
]

EXIT_REFUSED = 1  # not found, wrong state, database unreachable
EXIT_CONFIG = 2  # usage or configuration error (click's own usage errors exit 2 too)
EXIT_SCHEMA_TOO_NEW = 3
CONNECT_TIMEOUT = 5  # seconds: an unreachable database is reported, not waited for
APPLICATION_NAME = "forge cli"  # how pg_stat_activity shows the command's connection


def config_option(func: Any) -> Any:
    """-c/--config PATH (default ./forge.toml, or $FORGE_CONFIG), passed on as `config`: a loaded Config, or
    None when only $FORGE_DATABASE_URL says where the database is (the default forge.toml does not exist)."""

    def load(ctx: click.Context, param: click.Parameter, value: str) -> Config | None:
        defaulted = ctx.get_parameter_source("config") is ParameterSource.DEFAULT
        if defaulted and os.environ.get(DATABASE_URL_ENV) and not Path(value).exists():
            return None
        return load_config(value)

    return config_path_option("config", callback=load, help="The forge.toml to use.")(func)


def require_config(config: Config | None, command: str) -> Config:
    """`config`, for a command that needs the app's forge.toml; ConfigError when there is none."""
    if config is None:
        raise ConfigError(f"{command} needs the app's forge.toml ([app] modules): give -c PATH or set FORGE_CONFIG")
    return config


def node_settings(config: Config | None) -> NodeConfig:
    """The [node] settings: the config's, or the defaults when only $FORGE_DATABASE_URL is given."""
    return NodeConfig() if config is None else config.node


@contextlib.contextmanager
def database_url(config: Config | None) -> Iterator[str]:
    """The database URL for a command; the embedded cluster is started if needed, used while inside (so
    `forge db stop` refuses meanwhile) and left running: it outlives whoever started it."""
    if url := (os.environ.get(DATABASE_URL_ENV) if config is None else config.database_url()):
        yield url
        return
    embedded = embedded_postgres(require_config(config, "the embedded database"))
    with embedded.used():
        yield embedded.start()


@contextlib.contextmanager
def connect(config: Config | None, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the command's database. Without autocommit the command is one transaction: committed
    when the block ends, rolled back (nothing changed) when it raises. DatabaseError when unreachable."""
    import psycopg

    with database_url(config) as url:
        try:
            conn = psycopg.connect(
                url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME
            )
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the database {where(url)}: {one_line(exc)}") from None
        with conn:
            yield conn


def jobs_api(conn: psycopg.Connection[Any]) -> Jobs:
    """forge.Jobs on `conn`: the one implementation of the operations the commands are a thin layer over."""
    from forge.operations import Jobs

    return Jobs(conn)


def refuse(message: str, status: int = EXIT_REFUSED) -> NoReturn:
    """End the command: `message` as one line on stderr, exit `status` (by default 1: not found, wrong state)."""
    click.echo(f"forge: {message}", err=True)
    raise click.exceptions.Exit(status)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (PostgreSQL's have a DETAIL or HINT on lines of their own)."""
    return " ".join(str(exc).split()) or type(exc).__name__
