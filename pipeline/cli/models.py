"""`build-tiny`: the tiny random model, written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli


@cli.command("build-tiny")
@click.argument("folder", type=click.Path(path_type=Path), default=Path("models/tiny"))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def build_tiny(folder, seed):
    """Write the tiny random SDXL + LayerDiffuse model to FOLDER (default models/tiny).

    It uses the real on-disk formats, so it exercises the same loading code as real weights.

    \b
    Example:
      layerdiffuse build-tiny models/tiny
    """
    from ..model.testing.tiny import build_tiny_model

    click.echo(build_tiny_model(folder, seed))
