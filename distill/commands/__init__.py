"""One module per `distill` subcommand (see distill/cli.py)."""
