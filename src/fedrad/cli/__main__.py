"""`python -m fedrad.cli ...` is the `fedrad` command."""

from fedrad.cli import app

app()
