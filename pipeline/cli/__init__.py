"""The command line: flags become a Config, and each command calls its stage; no business logic here."""

from . import folder, generate, models  # noqa: F401  (each module adds its commands to the group)
from .app import Seams, cli, main

__all__ = ["Seams", "cli", "main"]
