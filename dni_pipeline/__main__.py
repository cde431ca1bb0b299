"""`python -m dni_pipeline` is the `dni-pipeline` command."""

from .cli import entry

entry()
