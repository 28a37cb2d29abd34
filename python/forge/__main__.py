"""`python -m forge`: the `forge` command line."""

from forge.cli.main import main

main()
