"""The command line: flags become a Config, and each command calls its stage; no business logic here."""

from .commands import cli, main

__all__ = ["cli", "main"]
