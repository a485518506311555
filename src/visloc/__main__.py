"""``python -m visloc`` runs the CLI."""

from visloc.cli import app

app()
