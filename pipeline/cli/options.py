"""What several commands share: defaults shown in `--help`, which config section a flag sets, option groups and
parameter checks."""

from __future__ import annotations

import click

from ..common.exits import ExitCode
from ..input.cells import MAX_IMAGES
from ..input.config import Config, ConfigError, load_config, load_notify
from ..input.sprite_settings import MAX_SIDE
from ..input.templates import MAX_COMBINATION_LIMIT
from .app import ExitError

D = load_config(None)  # the defaults that `--help` texts show (a config file or flag may change them)
NOTIFY_DEFAULTS = load_notify(None)


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


# Which config section each `generate` flag overrides.
FLAG_SECTIONS = {
    "model": ("base", "base_config", "vae", "loras", "injection", "scheduler", "vae_tiling", "device", "dtype"),
    "defaults": ("seed", "width", "height", "num_inference_steps", "guidance_scale", "negative_prompt",
                 "allow_empty_prompt", "num_images", "strength", "hires_scale", "hires_strength", "mode"),
    "run": ("batch_size", "limit", "max_failures", "overwrite", "strict", "safety_checker", "tta",
            "png_compress_level", "executor", "ray_address", "tasks", "gpus_per_task"),
    "templates": ("combinatorial", "wildcards", "combination_limit"),
    "sprites": ("trim", "alpha_threshold", "pad", "square", "pot", "sizes", "bleed", "premultiplied"),
}  # fmt: skip
NOTIFY_FLAGS = ("webhooks", "ping", "metrics_file", "metrics_interval")  # NotifyConfig's (docs/unattended.md)


def location_option(ctx, param, value):
    """A local path or an fsspec URL whose backend is installed (checked before anything runs)."""
    from ..common.storage import StorageError, locate

    try:
        locate(value)
    except StorageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def shard_option(ctx, param, value):
    if value is None:
        return None
    from ..plan.sharding import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def url_option(ctx, param, value):
    """http(s) URLs only, checked before anything runs; the message never repeats the URL (it may hold a token)."""
    from ..input.unattended_settings import check_url

    urls = value if isinstance(value, tuple) else () if value is None else (value,)  # --notify repeats
    try:
        for url in urls:
            check_url(url, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def loras_option(ctx, param, value):
    """Each `--lora` reads as PATH_OR_HUB_ID[:WEIGHT] before anything runs (the files are the run's to find)."""
    from ..input.lora_refs import LoraRef, LoraSpecError

    try:
        for spec in value:
            LoraRef.parse(spec)
    except LoraSpecError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def metrics_file_option(ctx, param, value):
    from ..input.config import check_metrics_file

    try:
        return value if value is None else check_metrics_file(value, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def sizes_option(ctx, param, value):
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
        click.option("--sizes", callback=sizes_option, metavar="512,256,64",
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


def unusable_images(built) -> str:
    shown = ", ".join(built.examples) + (" ..." if built.unusable > len(built.examples) else "")
    return (f"{built.unusable} image(s) missing or damaged ({shown}): their cards say which; rerun generate with "
            "--verify to make them again")  # fmt: skip


def read_config(config_path, log_format=None) -> Config:
    try:
        config = load_config(config_path)
        return config.with_overrides("run", log_format=log_format)
    except ConfigError as exc:
        raise ExitError(str(exc), ExitCode.USAGE) from None
