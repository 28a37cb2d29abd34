"""This Forge's version, from one place: the installed package's metadata, which pyproject.toml's version sets.

Read on first use only: importlib.metadata takes some 50-200 ms to import, which neither a supervisor's boot
nor a `forge` command should pay unless it shows the version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

_Command = TypeVar("_Command", bound=Callable[..., Any])

__all__ = ["DISTRIBUTION", "version", "version_option"]

DISTRIBUTION = "forge-jobs"  # the [project] name in pyproject.toml


@functools.cache
def version() -> str:
    """The version of the installed forge-jobs package (forge.__version__)."""
    from importlib.metadata import version as installed_version

    return installed_version(DISTRIBUTION)


def version_option(program: str) -> Callable[[_Command], _Command]:
    """-V/--version for a click command: print `<program> <version>` and exit."""

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(f"{program} {version()}")
            ctx.exit()

    return click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Show the version and exit.")
