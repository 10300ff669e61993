"""The `layerdiffuse` command group, its errors and exit, and the seams a caller may replace (`Seams`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import click

from ..common.exits import ExitCode
from ..common.storage import display, scrub


@dataclass(frozen=True)
class Seams:
    """What a caller may put in place of the real thing (`CliRunner().invoke(cli, args, obj=Seams(...))`): the
    renderer factory (tests pass one that fails or waits; benchmarks a stand-in device)."""

    renderers: Callable | None = None  # None: run.renderer.ModelRenderer


def seams() -> Seams:
    found = click.get_current_context().find_object(Seams)
    return found if found is not None else Seams()


class ExitError(click.ClickException):
    """An error with its own exit code, printed without a traceback."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(scrub(message))  # no credential read from a URL is ever printed
        self.exit_code = exit_code


@contextmanager
def storage_errors(location: str):
    """Every command's storage errors, local or remote, as one line and exit 6 (storage.storage_failure
    decides what is the storage's); anything else goes on as it is."""
    from ..common.storage import storage_failure

    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        failure = storage_failure(exc, display(location))
        if failure is None:
            raise
        raise ExitError(str(failure), ExitCode.OUTPUT) from None


class _Commands(click.Group):
    """Ctrl-C ends any command with exit 130 (the shell's convention), not Click's `Aborted!` and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="layerdiffuse-batch")
def cli():
    """Transparent (RGBA) images in bulk from a table of prompts, with SDXL + LayerDiffuse.

    \b
    Quick start (tiny embedded model, no downloads):
      layerdiffuse generate data/prompts.csv --config configs/tiny.yaml --out outputs/demo
    """


def main():
    try:
        cli(prog_name="layerdiffuse")
    except SystemExit as done:
        end_process(done.code)
    end_process(0)


def end_process(code) -> None:
    """Python's own shutdown (threads joined, atexit handlers run, streams flushed), then the process ends
    without the native libraries' static teardown. pyarrow threads that read Parquet through fsspec can still
    be in flight then and abort the process (`terminate called without an active exception`, apache/arrow
    #39162), which would turn a finished command's exit code into -6."""
    import atexit
    import os
    import threading

    if code is not None and not isinstance(code, int):  # sys.exit("text"): Python prints it and exits 1
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # what the interpreter does first at exit: join the non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe (`| head`) or stream
            stream.flush()
    os._exit(code or 0)
