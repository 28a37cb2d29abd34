"""Running `forge` commands in-process (click's CliRunner) on a test database, for the CLI's tests."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from forge.cli.main import cli


def forge(database_url: str, *args: str) -> Result:
    """`forge ARGS...` on `database_url`, with no config file (FORGE_CONFIG unset)."""
    return CliRunner().invoke(cli, list(args), env={"FORGE_DATABASE_URL": database_url, "FORGE_CONFIG": None})


def forge_json(database_url: str, *args: str) -> Any:
    """`forge ARGS... --json`, which must succeed; its output parsed."""
    result = forge(database_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
