"""Commands on an output folder: `status`, `merge`, `report`, `sprites`, `atlas`, `export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..common.exits import ExitCode, epilog
from ..common.storage import display
from ..export import DEFAULT_SHARD_SIZE as EXPORT_SHARD_SIZE
from ..export import FORMATS as EXPORT_FORMATS
from ..input.config import ConfigError
from .app import ExitError, cli, storage_errors
from .options import location_option, read_config, sprite_options, unusable_images


@cli.command(epilog=epilog("status"))
@click.argument("out_dir", metavar="DIR", callback=location_option)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.option("--verify", is_flag=True, help="Re-hash every image: count those whose content changed as damaged.")
def status(out_dir, as_json, verify):
    """Rows done / failed / invalid / pending in an output folder DIR (a path or an fsspec URL).

    A row is done when its record is ok and its image exists with the recorded size; no image is read
    unless --verify.

    \b
    Example:
      layerdiffuse status outputs/demo
    """
    from ..report.status import folder_status

    counts = _read_folder(lambda storage: folder_status(storage, verify), out_dir)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    sys.exit(ExitCode.OK if counts["done"] == counts["total"] else ExitCode.ROWS)


def _read_folder(function, out_dir: str):
    """Call `function(storage)` on an output folder, or say why DIR is not one (exit 2)."""
    from ..common.storage import Storage
    from ..folder.layout import KEYS, RUN_INFO
    from ..folder.manifest import FolderStateError

    storage = Storage(out_dir)
    with storage_errors(out_dir):
        found = storage.exists(KEYS) or storage.exists(RUN_INFO)
    if not found:
        message = f"{storage}: not an output folder of `layerdiffuse generate` ({storage.shown(KEYS)} missing)"
        raise ExitError(message, ExitCode.USAGE)
    with storage_errors(out_dir):
        try:
            return function(storage)
        except FolderStateError as exc:  # damaged beyond what the folder can rebuild; the message says what to do
            raise ExitError(str(exc), ExitCode.USAGE) from None


@cli.command("merge", epilog=epilog("merge"))
@click.argument("out_dir", metavar="DIR", callback=location_option)
def merge_command(out_dir):
    """Assemble DIR/manifest.parquet and manifest.jsonl from the per-process parts in DIR/parts/.

    `generate` does this itself when its last process finishes; use `merge` when the shards of one
    table ran as separate jobs (`--shard I/N`) or to check whether a run is complete.

    \b
    Example:
      for i in 0 1 2; do layerdiffuse generate t.parquet --out out/ --shard $i/3; done
      layerdiffuse merge out/
    """
    from ..folder.manifest import merge, missing_keys

    merged = _read_folder(merge, out_dir)
    if merged is None:
        missing = _read_folder(missing_keys, out_dir)
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        click.echo(f"{len(missing)} row(s) have no outcome yet ({shown}); run generate again to finish them", err=True)
        sys.exit(ExitCode.ROWS)
    out = display(out_dir).rstrip("/")
    done = "wrote" if merged.rewritten else "up to date:"
    click.echo(f"{done} {out}/manifest.parquet and {out}/manifest.jsonl ({merged.rows} rows)")


def _background(ctx, param, value):
    from ..report.gallery import parse_background

    try:
        return parse_background(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("report", epilog=epilog("report"))
@click.argument("out_dir", metavar="DIR", callback=location_option)
@click.option("--background", default="checker", show_default=True, callback=_background,
              help="Behind transparent pixels: checker, white, black or #rrggbb.")  # fmt: skip
@click.option("--sheet-count", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images on the contact sheet (the first N with an image).")  # fmt: skip
def report_command(out_dir, background, sheet_count):
    """Write DIR/report.html (a gallery to open in a browser) and DIR/contact_sheet.png.

    Built from the manifest alone, no model is loaded. Thumbnails are cached in DIR/thumbs/ and
    rebuilt only when their image changes.

    \b
    Example:
      layerdiffuse report outputs/demo --background checker
    """
    from ..report.gallery import build_report

    built = _read_folder(lambda d: build_report(d, background, sheet_count), out_dir)
    click.echo(f"wrote {built.page} and {built.sheet}")
    if built.unusable:
        click.echo(unusable_images(built), err=True)
        sys.exit(ExitCode.ROWS)


@cli.command("sprites", epilog=epilog("sprites"))
@click.argument("out_dir", metavar="DIR", callback=location_option)
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config: its sprites: section (flags override it) and run.png_compress_level.")  # fmt: skip
@sprite_options
@click.option("--remove", is_flag=True, help="Delete the derived sprites and stop making them for DIR.")
def sprites_command(out_dir, config_path, remove, **flags):
    """Derive the sprites of every finished image in DIR again, from its raw PNG, with these settings.

    The model is not loaded. Images whose sprites already match are left alone; the others get new
    files in DIR/sprites/<size>/ (files of other sizes are deleted) and updated manifest records.
    Later `generate` runs into DIR without sprite flags keep these settings.

    \b
    Example:
      layerdiffuse sprites out/ --trim --alpha-threshold 8 --pad 2 --pot --sizes 128,32
    """
    from ..folder.lock import FolderLocked, lock_folder
    from ..plan.sharding import Process
    from ..sprites.rederive import refresh_sprites

    config = read_config(config_path)
    try:
        settings = config.with_overrides("sprites", **flags).sprites
    except ConfigError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None
    if settings.active == remove:
        message = "--remove takes no sprite settings" if remove else "give sprite settings, e.g. --trim --sizes 64"
        raise ExitError(f"{message} (see --help)", ExitCode.USAGE)

    def refresh(storage):
        with lock_folder(storage, Process()):  # no generate may write the folder meanwhile
            return refresh_sprites(storage, settings, config.run.png_compress_level)

    try:
        done = _read_folder(refresh, out_dir)
    except FolderLocked as exc:
        raise ExitError(str(exc), ExitCode.LOCKED) from None
    what = "removed the sprites of" if remove else "derived the sprites of"
    click.echo(f"{what} {done.derived} images ({done.current} already as asked)")
    if done.dropped_atlases:
        shown = ", ".join(f"{display(out_dir).rstrip('/')}/atlas/{label}" for label in done.dropped_atlases)
        click.echo(f"removed {shown}: their sprites changed; run `layerdiffuse atlas` again to pack them")
    if not done.manifest_written:
        click.echo("some rows have no image yet: the manifest is merged when generate finishes them", err=True)
        sys.exit(ExitCode.ROWS)


@cli.command("atlas", epilog=epilog("atlas"))
@click.argument("out_dir", metavar="DIR", callback=location_option)
@click.option("--label", metavar="L", help="Only the sprites of this size label (default: every label).")
@click.option("--max-size", default=2048, show_default=True, type=click.IntRange(1, 16384), metavar="N",
              help="Largest sheet side in pixels; more sheets when the sprites need them.")  # fmt: skip
@click.option("--padding", default=2, show_default=True, type=click.IntRange(0, 1024), metavar="N",
              help="Transparent pixels between frames.")  # fmt: skip
@click.option("--trim", is_flag=True, help="Crop each frame to its visible pixels on the sheet (the JSON says where).")
@click.option("--name", default="sheet", show_default=True, metavar="NAME",
              help="Sheet file names: NAME-0.png, NAME-0.json, ...")  # fmt: skip
def atlas_command(out_dir, label, max_size, padding, trim, name):
    """Pack DIR's sprites into sheets with TexturePacker JSON (Hash) files, per size: DIR/atlas/<size>/.

    Frames are named by image key; Phaser, PixiJS and Godot importers read the JSON. Packing is
    deterministic: the same sprites give byte-identical sheets.

    \b
    Example:
      layerdiffuse atlas out/ --max-size 1024 --padding 2
    """
    from ..sprites.packer import AtlasError
    from ..sprites.sheets import pack_folder

    try:
        packed = _read_folder(lambda d: pack_folder(d, label, max_size, padding, trim, name), out_dir)
    except AtlasError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None
    out = display(out_dir).rstrip("/")
    for sheet in packed:
        files = ", ".join(f"{out}/{f}" for f in sheet.files if f.endswith(".json"))
        click.echo(f"{sheet.label}: {sheet.frames} frames in {files}")


@cli.command("export", epilog=epilog("export"))
@click.argument("source", metavar="DIR", callback=location_option)
@click.option("--format", "fmt", required=True, type=click.Choice(list(EXPORT_FORMATS)),
              help="tar shards, a Hugging Face imagefolder, or Parquet with Image columns.")  # fmt: skip
@click.option("--to", "dest", required=True, metavar="DEST", callback=location_option,
              help="Empty folder or fsspec URL (s3://, gs://, hf://).")  # fmt: skip
@click.option("--shard-size", default=EXPORT_SHARD_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Samples per tar / Parquet file, images per imagefolder subfolder.")  # fmt: skip
@click.option("--include-flagged", is_flag=True, help="Also export flagged rows (transparent placeholder PNGs).")
@click.option("--overwrite", is_flag=True, help="Delete what DEST holds first (otherwise it must be empty).")
def export_command(source, fmt, dest, shard_size, include_flagged, overwrite):
    """Export the images and manifest records of output folder DIR for training code.

    Rows with status ok are exported; failed and invalid rows never, flagged rows only with
    --include-flagged. DIR and DEST may be local paths or fsspec URLs; every file appears whole,
    and DEST/export.json (counts and shards) is written last.

    \b
    Examples:
      layerdiffuse export outputs/demo --format webdataset --to exports/wds
      layerdiffuse export outputs/demo --format parquet --to s3://bucket/sprites --shard-size 5000
      layerdiffuse export outputs/demo --format imagefolder --to exports/hf --include-flagged
    """
    from ..export import ExportError, export

    try:
        summary = export(source, dest, fmt, shard_size, include_flagged, overwrite)
    except ExportError as exc:
        raise ExitError(str(exc), exc.exit_code) from None
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(summary.skipped.items())) or "none"
    files = len(summary.files)
    click.echo(f"exported {summary.rows} rows as {fmt} to {summary.dest} ({files} files; left out: {skipped})")
