"""Command line: turns flags into a Config and calls the stages; no business logic here."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import click

from ..common.exits import ExitCode, epilog
from ..common.storage import display, scrub
from ..export import DEFAULT_SHARD_SIZE as EXPORT_SHARD_SIZE
from ..export import FORMATS as EXPORT_FORMATS
from ..input.cells import MAX_IMAGES
from ..input.config import DTYPES, EXECUTORS, INJECTIONS, LOG_FORMATS, Config, ConfigError, load_config, load_notify
from ..input.schedulers import SCHEDULER_NAMES
from ..input.sprite_settings import MAX_SIDE
from ..input.templates import MAX_COMBINATION_LIMIT

D = load_config(None)  # the defaults that `--help` texts show (a config file or flag may change them)
NOTIFY_DEFAULTS = load_notify(None)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# Which config section each `generate` flag overrides.
FLAG_SECTIONS = {
    "model": ("base", "base_config", "vae", "loras", "injection", "scheduler", "vae_tiling", "device", "dtype"),
    "defaults": ("seed", "width", "height", "num_inference_steps", "guidance_scale", "negative_prompt",
                 "allow_empty_prompt", "num_images"),
    "run": ("batch_size", "limit", "max_failures", "overwrite", "strict", "safety_checker", "tta",
            "png_compress_level", "executor", "ray_address", "tasks", "gpus_per_task"),
    "templates": ("combinatorial", "wildcards", "combination_limit"),
    "sprites": ("trim", "alpha_threshold", "pad", "square", "pot", "sizes", "bleed", "premultiplied"),
}  # fmt: skip
NOTIFY_FLAGS = ("webhooks", "ping", "metrics_file", "metrics_interval")  # NotifyConfig's (docs/unattended.md)


@dataclass(frozen=True)
class Seams:
    """What a caller may put in place of the real thing (`CliRunner().invoke(cli, args, obj=Seams(...))`): the
    renderer factory (tests pass one that fails or waits; benchmarks a stand-in device)."""

    renderers: Callable | None = None  # None: run.renderer.ModelRenderer


def _seams() -> Seams:
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


def _location(ctx, param, value):
    """A local path or an fsspec URL whose backend is installed (checked before anything runs)."""
    from ..common.storage import StorageError, locate

    try:
        locate(value)
    except StorageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _shard(ctx, param, value):
    if value is None:
        return None
    from ..plan.sharding import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _url(ctx, param, value):
    """http(s) URLs only, checked before anything runs; the message never repeats the URL (it may hold a token)."""
    from ..input.unattended_settings import check_url

    urls = value if isinstance(value, tuple) else () if value is None else (value,)  # --notify repeats
    try:
        for url in urls:
            check_url(url, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _loras(ctx, param, value):
    """Each `--lora` reads as PATH_OR_HUB_ID[:WEIGHT] before anything runs (the files are the run's to find)."""
    from ..input.lora_refs import LoraRef, LoraSpecError

    try:
        for spec in value:
            LoraRef.parse(spec)
    except LoraSpecError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _metrics_file(ctx, param, value):
    from ..input.config import check_metrics_file

    try:
        return value if value is None else check_metrics_file(value, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _sizes(ctx, param, value):
    from ..input.sprite_settings import parse_sizes

    try:
        return value if value is None else parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def sprite_options(function):
    """The sprite post-processing flags, the same on `generate` and `sprites` (config section `sprites:`)."""
    options = [
        click.option("--trim", is_flag=True, default=None, help="Sprites: crop to the pixels with alpha above the "
                     "threshold."),
        click.option("--alpha-threshold", type=click.IntRange(0, 254), metavar="N",
                     help=f"Sprites: alpha at or below N counts as empty (default {D.sprites.alpha_threshold})."),
        click.option("--pad", type=click.IntRange(0, MAX_SIDE), metavar="N",
                     help="Sprites: transparent border of N output pixels on every side."),
        click.option("--square", is_flag=True, default=None, help="Sprites: square canvas, object centred."),
        click.option("--pot", is_flag=True, default=None, help="Sprites: power-of-two width and height."),
        click.option("--sizes", callback=_sizes, metavar="512,256,64",
                     help="Sprites: one per size, its longest side (padding included); default: the object's size."),
        click.option("--bleed", is_flag=True, default=None,
                     help="Sprites: transparent pixels take the colour of the nearest visible one (for mipmaps)."),
        click.option("--premultiplied", is_flag=True, default=None, help="Sprites: write colour x alpha."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def template_options(function):
    """Images per row and prompt templates, the same on `generate` and `validate` (config `templates:`)."""
    options = [
        click.option("--images-per-prompt", "num_images", type=click.IntRange(1, MAX_IMAGES), metavar="N",
                     help=f"Images of rows without num_images; image i: seed + i (default {D.defaults.num_images})."),
        click.option("--wildcards", metavar="DIR", help="Folder of wildcard files for __name__ in prompt templates."),
        click.option("--combinatorial", is_flag=True, default=None,
                     help="A template row gives every combination (default: one prompt drawn from its seed)."),
        click.option("--combination-limit", type=click.IntRange(1, MAX_COMBINATION_LIMIT), metavar="N",
                     help="Most prompts a template row may give in combinatorial mode "
                          f"(default {D.templates.combination_limit:,}, at most {MAX_COMBINATION_LIMIT:,})."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


@cli.command(epilog=epilog("generate"))
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_dir", required=True, callback=_location,
              help="Output folder: a local path or an fsspec URL (s3://bucket/run, gs://..., hf://...).")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config (see configs/).")
@click.option("--model", help="SDXL base: hub id, diffusers folder or .safetensors file (overrides config).")
@click.option("--base-config", help="Diffusers folder or hub id with the configs for a single-file --model.")
@click.option("--vae", help="VAE override: hub id, diffusers folder or .safetensors file.")
@click.option("--lora", "loras", multiple=True, metavar="PATH_OR_HUB_ID[:WEIGHT]", callback=_loras,
              help="A LoRA for every row, weight 1 by default (repeatable; replaces model.loras; a row's "
                   "`loras` column adds its own).")  # fmt: skip
@click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), help=f"Sampler (default {D.model.scheduler}).")
@click.option(
    "--injection", type=click.Choice(INJECTIONS), help=f"LayerDiffuse UNet patch (default {D.model.injection})."
)
@click.option("--vae-tiling/--no-vae-tiling", default=None, help="Tiled VAE decode: less memory at large sizes.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per denoising call.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), help="Base seed for rows without a seed.")
@click.option("--width", type=int, help="Default width for rows without one (multiple of 64).")
@click.option("--height", type=int, help="Default height for rows without one (multiple of 64).")
@click.option("--num-inference-steps", type=int, help=f"Default steps (hosted API: {D.defaults.num_inference_steps}).")
@click.option("--guidance-scale", type=float, help=f"Default CFG scale (hosted API: {D.defaults.guidance_scale:g}).")
@click.option("--negative-prompt", help=f'Default negative prompt (hosted API: "{D.defaults.negative_prompt}").')
@click.option("--allow-empty-prompt", is_flag=True, default=None, help="Accept rows with an empty prompt.")
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N rows of the table.")
@click.option("--max-failures", type=click.IntRange(min=0), help="Stop once more than N rows have failed.")
@click.option("--overwrite", is_flag=True, default=None, help="Redo every row, even those already done.")
@click.option("--strict", is_flag=True, default=None, help="Refuse the whole table if any row is invalid.")
@click.option(
    "--safety-checker/--no-safety-checker",
    default=None,
    help=f"Run the checker on rows that ask (default {_on(D.run.safety_checker)}, as the hosted API).",
)
@click.option(
    "--tta/--no-tta", default=None, help=f"8-view test-time augmentation in the decoder (default {_on(D.run.tta)})."
)
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: auto).")
@click.option("--dtype", type=click.Choice(DTYPES), help="Model dtype (auto: float16 on GPU, float32 on CPU).")
@click.option(
    "--png-compress-level",
    type=click.IntRange(0, 9),
    help=f"zlib level of the PNGs (default {D.run.png_compress_level}).",
)
@click.option("--shard", callback=_shard, metavar="I/N", help="Run only shard I of N (for job arrays).")
@click.option("--executor", type=click.Choice(EXECUTORS),
              help="Where the shards run: local (this process; the default) or ray (a Ray cluster).")  # fmt: skip
@click.option("--ray-address", metavar="ADDR", help="Ray cluster to use (default: $RAY_ADDRESS, else one on this "
              "machine).")  # fmt: skip
@click.option("--tasks", type=click.IntRange(min=1), metavar="N",
              help="Ray: shards of the table (default: 4 per worker the cluster has room for).")  # fmt: skip
@click.option("--gpus-per-task", type=click.FloatRange(min=0), metavar="G",
              help="Ray: GPUs each task reserves (default: 1 on a cluster with GPUs, else 0).")  # fmt: skip
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help="json: one object per line for cron.")
@click.option("--verify", is_flag=True, help="Re-hash finished images and redo those whose content changed.")
@click.option("--report", "make_report", is_flag=True, help="Write DIR/report.html and contact_sheet.png at the end.")
@click.option("--notify", "webhooks", multiple=True, metavar="URL", callback=_url,
              help="POST a JSON report to URL when the run ends (repeatable; signed with "
                   "$LAYERDIFFUSE_WEBHOOK_SECRET when set; a `user:password@` in URL is sent as HTTP "
                   "basic auth).")  # fmt: skip
@click.option("--ping", metavar="URL", callback=_url,
              help="Health check: URL/start, then URL on success or URL/fail (`user:password@`: "
                   "basic auth).")  # fmt: skip
@click.option("--metrics-file", metavar="PATH.prom", callback=_metrics_file,
              help="Prometheus textfile (node_exporter), rewritten while running and at the end.")  # fmt: skip
@click.option(
    "--metrics-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help=f"Seconds between rewrites of --metrics-file (default {NOTIFY_DEFAULTS.metrics_interval:g}).",
)
@template_options
@sprite_options
def generate(input_path, out_dir, config_path, shard, log_format, make_report, **flags):
    """Generate one RGBA PNG per row of INPUT (.csv, .parquet or .jsonl) into OUT/images/.

    Table columns: prompt (required); optional id, seed, negative_prompt, guidance_scale,
    num_inference_steps, width, height, enable_safety_checker, num_images, loras
    (`path:weight; path:weight`); other columns are copied into the manifest. Flags set defaults for
    rows that lack a value; a row's own value wins. Prompts may be templates ({red|blue} potion,
    __wildcard__). Rerunning skips rows that are done and redoes the rest. Sprite flags derive trimmed,
    padded, resized copies into OUT/sprites/.

    \b
    Examples:
      layerdiffuse generate data/prompts.csv --config configs/tiny.yaml --out outputs/demo
      layerdiffuse generate prompts.parquet --out out/ --batch-size 4 --log-format json
      layerdiffuse generate t.csv --out out/ --model juggernautXL.safetensors --lora pixel-art.safetensors:0.8
      layerdiffuse generate t.parquet --out out/ --notify "$HOOK" --ping "$HC" --metrics-file nightly.prom
      layerdiffuse generate items.csv --out out/ --wildcards wildcards/ --trim --pad 4 --sizes 256,64
      accelerate launch --multi_gpu --num_processes 8 -m pipeline generate prompts.parquet --out out/
      layerdiffuse generate big.parquet --out s3://bucket/run --executor ray --ray-address auto --tasks 1000
    """
    from ..unattended.watch import RunWatch, WatchedLog

    log = WatchedLog(log_format or "text", rank=shard[0] if shard else 0)
    watch = RunWatch(out_dir, shard, log)
    with watch.reporting():  # once the run holds its folder, it reports how it ended, whatever ends it
        _generate(watch, input_path, out_dir, config_path, shard, log_format, make_report, flags)


def _generate(watch, input_path, out_dir, config_path, shard, log_format, make_report, flags):
    log = watch.log
    try:
        config = _config(config_path, log_format)
        log.fmt = config.run.log_format
        watch.configure(_notify_config(config_path, flags))
        flags["base"], verify = flags.pop("model"), flags.pop("verify")
        flags["loras"] = flags["loras"] or None  # no --lora: the config file's
        for section, names in FLAG_SECTIONS.items():
            config = config.with_overrides(section, **{name: flags[name] for name in names})
        summary = _run_generate(config, input_path, out_dir, shard, log, verify, watch)
    except ExitError as exc:
        log.event("error", exc.message, exit_code=exc.exit_code)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        log.event("error", str(exc), exit_code=int(ExitCode.USAGE))
        sys.exit(ExitCode.USAGE)
    except Exception as exc:  # a bug: still one parseable line for cron, and the traceback for a report
        log.event("error", f"internal error: {type(exc).__name__}: {exc}", exit_code=int(ExitCode.INTERNAL))
        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(ExitCode.INTERNAL)
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the run held its folder)
        log.event("aborted", "aborted at once: the batch under way was dropped; rerun to continue",
                  exit_code=int(ExitCode.INTERRUPTED))  # fmt: skip
        sys.exit(ExitCode.INTERRUPTED)
    if summary.manifest_written:
        out = display(out_dir).rstrip("/")
        log.event("done", f"images in {out}/images, manifest in {out}/manifest.parquet")
    if make_report and summary.manifest_written:
        _report_after_run(out_dir, log)
    sys.exit(summary.exit_code)


def _report_after_run(out_dir: str, log) -> None:
    """--report: a report that cannot be built is a warning; the run's images and exit code stand."""
    from ..common.storage import Storage
    from ..report.gallery import build_report

    try:
        built = build_report(Storage(out_dir))
    except Exception as exc:
        log.event("report_failed", f"{type(exc).__name__}: {exc}; rerun `layerdiffuse report {display(out_dir)}`")
        return
    unusable = f"; {_unusable_images(built)}" if built.unusable else ""
    log.event("report", f"open {built.page} in a browser{unusable}")


def _notify_config(config_path, flags: dict):
    from ..input.config import load_notify

    values = {name: flags.pop(name) for name in NOTIFY_FLAGS}
    return load_notify(config_path).with_overrides(**values)


def _run_generate(config: Config, input_path: Path, out_dir: str, shard, log, verify: bool, observer=None):
    from ..common.storage import StorageError
    from ..folder.lock import FolderLocked
    from ..input.table import TableError
    from ..model.sources import ModelLoadError
    from ..run.loop import RunRequest, TooManyFailures
    from ..run.ray_executor import ClusterError
    from ..run.renderer import ModelRenderer

    codes = {
        TableError: ExitCode.USAGE,
        ClusterError: ExitCode.USAGE,
        StorageError: ExitCode.USAGE,
        ModelLoadError: ExitCode.MODEL,
        FolderLocked: ExitCode.LOCKED,
        TooManyFailures: ExitCode.TOO_MANY_FAILURES,
    }
    request = RunRequest(config, input_path, out_dir, verify, renderers=_seams().renderers or ModelRenderer)
    executor = _executor(config, shard)
    try:
        with storage_errors(out_dir):
            return executor.run(request, log, observer)
    except tuple(codes) as exc:
        raise ExitError(str(exc), next(code for kind, code in codes.items() if isinstance(exc, kind))) from None


def _executor(config: Config, shard):
    """Where the run's shards run: this process (the whole table, a `--shard` job's) or a Ray cluster."""
    from ..run.executor import InProcess
    from ..run.loop import Task

    if config.run.executor == "local":
        return InProcess(Task(*shard) if shard else None)
    if shard:
        raise ExitError("--shard I/N runs one shard as an independent job, while --executor ray splits the table "
                        "itself: use one or the other", ExitCode.USAGE)  # fmt: skip
    from ..run.ray_executor import RayExecutor, RaySettings

    return RayExecutor(RaySettings.of(config.run))


def _config(config_path, log_format=None) -> Config:
    try:
        config = load_config(config_path)
        return config.with_overrides("run", log_format=log_format)
    except ConfigError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None


@cli.command(epilog=epilog("validate"))
@click.argument("input_path", metavar="INPUT")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config for the defaults.")
@click.option("--allow-empty-prompt", is_flag=True, default=None, help="Accept rows with an empty prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@template_options
def validate(input_path, config_path, allow_empty_prompt, as_json, **flags):
    """Check INPUT without loading a model: print a summary and every problem.

    Template rows are expanded as `generate` would (their errors are listed); `images` counts the
    images the valid rows give.

    \b
    Example:
      layerdiffuse validate data/prompts.csv
    """
    from ..folder.schema import RESERVED_COLUMNS
    from ..input.table import TableError, load_table

    try:
        config = _config(config_path).with_overrides("defaults", allow_empty_prompt=allow_empty_prompt,
                                                     num_images=flags.pop("num_images"))  # fmt: skip
        config = config.with_overrides("templates", **flags)
    except ConfigError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None
    try:
        table = load_table(input_path, config.defaults, templates=config.templates, reserved=RESERVED_COLUMNS)
    except TableError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None
    problems = [e for row in table.invalid for e in row.errors]
    valid = table.row_count - len(table.invalid)
    if as_json:
        click.echo(json.dumps({"input": str(input_path), "rows": table.row_count, "valid": valid,
                               "invalid": len(table.invalid), "images": len(table.valid),
                               "problems": problems}))  # fmt: skip
    else:
        images = f", {len(table.valid)} images" if len(table.valid) != valid else ""
        click.echo(f"{input_path}: {table.row_count} rows, {valid} valid, {len(table.invalid)} invalid{images}")
        click.echo(f"columns: {', '.join(table.columns)}")
        for problem in problems:
            click.echo(f"  - {problem}")
    sys.exit(ExitCode.ROWS if table.invalid else ExitCode.OK)


@cli.command(epilog=epilog("status"))
@click.argument("out_dir", metavar="DIR", callback=_location)
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
@click.argument("out_dir", metavar="DIR", callback=_location)
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
@click.argument("out_dir", metavar="DIR", callback=_location)
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
        click.echo(_unusable_images(built), err=True)
        sys.exit(ExitCode.ROWS)


def _unusable_images(built) -> str:
    shown = ", ".join(built.examples) + (" ..." if built.unusable > len(built.examples) else "")
    return (f"{built.unusable} image(s) missing or damaged ({shown}): their cards say which; rerun generate with "
            "--verify to make them again")  # fmt: skip


@cli.command("sprites", epilog=epilog("sprites"))
@click.argument("out_dir", metavar="DIR", callback=_location)
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

    config = _config(config_path)
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
@click.argument("out_dir", metavar="DIR", callback=_location)
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


@cli.command("export", epilog=epilog("export"))
@click.argument("source", metavar="DIR", callback=_location)
@click.option("--format", "fmt", required=True, type=click.Choice(list(EXPORT_FORMATS)),
              help="tar shards, a Hugging Face imagefolder, or Parquet with Image columns.")  # fmt: skip
@click.option("--to", "dest", required=True, metavar="DEST", callback=_location,
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
