"""The `forge` command: operations on a Forge database, configured by forge.toml. This module wires the
commands of the modules beside it (one per role) and turns Forge's errors into exit statuses.

Exit statuses (cli/frame.py), each with a one-line message on stderr: 0 success; 1 not found, wrong state,
database unreachable or refusing (DatabaseError and the other ForgeErrors, psycopg errors), also a refused
`forge db stop`; 2 a bad config file or command line (ConfigError, usage errors, a refused `forge dispatch`);
3 a database whose schema is newer than this Forge (SchemaTooNew).
"""

from __future__ import annotations

from typing import Any

import click
import psycopg

from forge.cli import db, dispatch, jobs, queues, status
from forge.cli.frame import EXIT_CONFIG, EXIT_REFUSED, EXIT_SCHEMA_TOO_NEW, one_line
from forge.errors import ConfigError, DispatchError, ForgeError, SchemaTooNew
from forge.version import version_option

__all__ = ["cli", "main"]


class _ForgeGroup(click.Group):
    """A click group that turns Forge's errors into a one-line message and a documented exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:  # `forge jobs` alone: its help, as click shows it
            raise
        except click.UsageError as exc:  # one line, naming the bad value, instead of click's three
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            _fail(ctx, f"{where}{exc.format_message()}", exc.exit_code)
        except (ConfigError, DispatchError) as exc:
            _fail(ctx, str(exc), EXIT_CONFIG)
        except SchemaTooNew as exc:
            _fail(ctx, str(exc), EXIT_SCHEMA_TOO_NEW)
        except ForgeError as exc:  # DatabaseError, JobNotFound, JobStateError...
            _fail(ctx, str(exc), EXIT_REFUSED)
        except psycopg.errors.UndefinedTable as exc:
            _fail(ctx, f"{one_line(exc)} (is the schema migrated? run forge migrate)", EXIT_REFUSED)
        except psycopg.Error as exc:
            _fail(ctx, f"the database refused: {one_line(exc)}", EXIT_REFUSED)


def _fail(ctx: click.Context, message: str, status: int) -> None:
    click.echo(f"forge: {message}", err=True)
    ctx.exit(status)


@click.group(cls=_ForgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("forge")
def cli() -> None:
    """Forge: durable background jobs for Python on PostgreSQL.

    The database is $FORGE_DATABASE_URL, else [database] url in forge.toml,
    else an embedded PostgreSQL under .forge/postgres beside forge.toml.
    Every command takes -c PATH (default ./forge.toml, or $FORGE_CONFIG).
    """


for command in (status.status, jobs.jobs, queues.queues, dispatch.dispatch, db.migrate, db.db):
    cli.add_command(command)


def main() -> None:
    """Entry point of the `forge` script (and of `python -m forge`)."""
    cli(prog_name="forge")


if __name__ == "__main__":
    main()
