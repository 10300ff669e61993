"""`generate` (the run, reported by its watch) and `validate` (the table alone, no model)."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from ..common.exits import ExitCode, epilog
from ..common.storage import display, scrub
from ..input.cells import LAYER_MODES, MAX_HIRES_SCALE
from ..input.config import DTYPES, EXECUTORS, INJECTIONS, LOG_FORMATS, Config, ConfigError, load_notify
from ..input.schedulers import SCHEDULER_NAMES
from .app import ExitError, cli, seams, storage_errors
from .options import (
    FLAG_SECTIONS,
    NOTIFY_DEFAULTS,
    NOTIFY_FLAGS,
    D,
    location_option,
    loras_option,
    metrics_file_option,
    on_off,
    read_config,
    shard_option,
    sprite_options,
    template_options,
    unusable_images,
    url_option,
)


@cli.command(epilog=epilog("generate"))
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_dir", required=True, callback=location_option,
              help="Output folder: a local path or an fsspec URL (s3://bucket/run, gs://..., hf://...).")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config (see configs/).")
@click.option("--model", help="SDXL base: hub id, diffusers folder or .safetensors file (overrides config).")
@click.option("--base-config", help="Diffusers folder or hub id with the configs for a single-file --model.")
@click.option("--vae", help="VAE override: hub id, diffusers folder or .safetensors file.")
@click.option("--lora", "loras", multiple=True, metavar="PATH_OR_HUB_ID[:WEIGHT]", callback=loras_option,
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
@click.option(
    "--strength",
    type=click.FloatRange(0, 1),
    metavar="S",
    help=f"img2img: how much of a row's `image` is redone (default {D.defaults.strength:g}).",
)
@click.option(
    "--hires-scale",
    type=click.FloatRange(1, MAX_HIRES_SCALE),
    metavar="X",
    help=f"Hires with alpha: upscale by X, then img2img (default {D.defaults.hires_scale:g}: off).",
)
@click.option(
    "--hires-strength",
    type=click.FloatRange(0, 1),
    metavar="S",
    help=f"Strength of the hires pass (default {D.defaults.hires_strength:g}).",
)
@click.option(
    "--mode",
    type=click.Choice(LAYER_MODES),
    help=f"Layer mode of rows without one (default {D.defaults.mode}; docs/layerdiffuse.md).",
)
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N rows of the table.")
@click.option("--max-failures", type=click.IntRange(min=0), help="Stop once more than N rows have failed.")
@click.option("--overwrite", is_flag=True, default=None, help="Redo every row, even those already done.")
@click.option("--strict", is_flag=True, default=None, help="Refuse the whole table if any row is invalid.")
@click.option(
    "--safety-checker/--no-safety-checker",
    default=None,
    help=f"Run the checker on rows that ask (default {on_off(D.run.safety_checker)}, as the hosted API).",
)
@click.option(
    "--tta/--no-tta", default=None, help=f"8-view test-time augmentation in the decoder (default {on_off(D.run.tta)})."
)
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: auto).")
@click.option("--dtype", type=click.Choice(DTYPES), help="Model dtype (auto: float16 on GPU, float32 on CPU).")
@click.option(
    "--png-compress-level",
    type=click.IntRange(0, 9),
    help=f"zlib level of the PNGs (default {D.run.png_compress_level}).",
)
@click.option("--shard", callback=shard_option, metavar="I/N", help="Run only shard I of N (for job arrays).")
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
@click.option("--notify", "webhooks", multiple=True, metavar="URL", callback=url_option,
              help="POST a JSON report to URL when the run ends (repeatable; signed with "
                   "$LAYERDIFFUSE_WEBHOOK_SECRET when set; a `user:password@` in URL is sent as HTTP "
                   "basic auth).")  # fmt: skip
@click.option("--ping", metavar="URL", callback=url_option,
              help="Health check: URL/start, then URL on success or URL/fail (`user:password@`: "
                   "basic auth).")  # fmt: skip
@click.option("--metrics-file", metavar="PATH.prom", callback=metrics_file_option,
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
        config = read_config(config_path, log_format)
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
    unusable = f"; {unusable_images(built)}" if built.unusable else ""
    log.event("report", f"open {built.page} in a browser{unusable}")


def _notify_config(config_path, flags: dict):

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
    request = RunRequest(config, input_path, out_dir, verify, renderers=seams().renderers or ModelRenderer)
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
        config = read_config(config_path).with_overrides("defaults", allow_empty_prompt=allow_empty_prompt,
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
