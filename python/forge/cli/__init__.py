"""The `forge` command line: `forge migrate`, and (added later) `forge jobs ...`."""

from forge.cli.main import cli, main

__all__ = ["cli", "main"]
