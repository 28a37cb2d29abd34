"""How `forge` and `forge-supervisor` find their forge.toml, the one rule both follow: `-c PATH` first, else
$FORGE_CONFIG, else ./forge.toml (of the folder they run in). A missing file is the loader's ConfigError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "config_path_option"]

CONFIG_ENV = "FORGE_CONFIG"
DEFAULT_CONFIG = "forge.toml"


def config_path_option(name: str, **extra: Any) -> Callable[[Any], Any]:
    """The -c/--config PATH option, its value (the path, as a str) passed on as `name`; `extra` are further
    click.option arguments (a callback, the help text)."""
    return click.option(
        "-c", "--config", name, default=DEFAULT_CONFIG, envvar=CONFIG_ENV, show_default=True, metavar="PATH",
        type=click.Path(dir_okay=False), **extra,
    )
