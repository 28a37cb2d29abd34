"""The `forge` command line (cli/main.py)."""

from forge.cli.main import cli, main

__all__ = ["cli", "main"]
