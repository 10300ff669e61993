"""Run configuration: frozen dataclasses with defaults in code, loaded from configs/*.yaml plus flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from .cells import CellError, column_rules
from .schedulers import SCHEDULER_NAMES
from .sprite_settings import SpriteSettings
from .templates import MAX_COMBINATION_LIMIT

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
LAYERDIFFUSE_REPO = "LayerDiffusion/layerdiffusion-v1"
INJECTIONS = ("attn", "conv")
DTYPES = ("auto", "float32", "float16", "bfloat16")
LOG_FORMATS = ("text", "json")
EXECUTORS = ("local", "ray")  # where a run's shards run (pipeline/run/executor.py)
NOTIFY = "notify"  # the config file's section for NotifyConfig


class ConfigError(ValueError):
    """A configuration file or flag is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from: hub ids, local folders or files."""

    base: str = SDXL_BASE  # hub id, diffusers folder, or single-file .safetensors checkpoint
    base_config: str | None = None  # diffusers folder / hub id with configs, for single-file checkpoints
    variant: str | None = None  # e.g. "fp16" for the hub's half-precision files
    vae: str | None = None  # optional VAE override, e.g. madebyollin/sdxl-vae-fp16-fix
    loras: tuple[str, ...] = ()  # LoRAs for every row, `PATH_OR_HUB_ID[:WEIGHT]`; a row's `loras` cell adds its own
    layerdiffuse: str = LAYERDIFFUSE_REPO  # hub repo id or local folder holding the files below
    injection: str = "attn"  # attn | conv
    unet_weights: str | None = None  # file name in `layerdiffuse`, or a path; default by injection
    decoder_weights: str = "vae_transparent_decoder.safetensors"
    # Loaded (and required) only when rows need them: img2img and hires rows, and the conditional layer modes.
    encoder_weights: str | None = None  # file name in `layerdiffuse`, or a path; None: vae_transparent_encoder
    conditional_weights: dict[str, str] = field(default_factory=dict)  # mode -> file; unnamed modes: the release's
    strength: float = 1.0
    scheduler: str = "euler"
    dtype: str = "auto"  # auto: float32 on CPU, float16 on GPU
    device: str = "auto"  # auto: cuda:<local rank> when available, else cpu
    safety_checker: str = "CompVis/stable-diffusion-safety-checker"  # hub id or local folder
    vae_tiling: bool = False  # decode the VAE in tiles: less memory at large sizes (changes pixels)
    # Speed knobs (they do not change which rows count as done; they may move low bits):
    compile: bool = False  # torch.compile the UNet, VAE decoder and transparent decoder (slow first batch)
    channels_last: bool = False  # NHWC memory format for the convolutional models (faster on recent GPUs)
    build_tiny_if_missing: bool = False  # build the embedded tiny model if absent (only at its own paths)

    @property
    def unet_weights_file(self) -> str:
        return self.unet_weights or f"layer_xl_transparent_{self.injection}.safetensors"


@dataclass(frozen=True)
class Defaults:
    """Per-row parameters for rows that lack the column (the hosted API's defaults)."""

    negative_prompt: str = "text, watermark"
    guidance_scale: float = 8.0
    num_inference_steps: int = 20
    width: int = 1024
    height: int = 1024
    enable_safety_checker: bool = True
    seed: int = 0  # base seed from which rows without a seed get theirs
    allow_empty_prompt: bool = False
    num_images: int = 1  # images per row (seeds seed, seed + 1, ...); --images-per-prompt
    # Transparent img2img, hires and layer modes (docs/layerdiffuse.md §7-9); each applies only where used.
    image: str | None = None  # RGBA input for img2img: a path or fsspec URL
    strength: float = 0.75  # img2img denoising strength (0: the input back, 1: from noise), as AUTOMATIC1111
    hires_scale: float = 1.0  # > 1: a second img2img pass at this scale (sizes rounded to multiples of 64)
    hires_strength: float = 0.4  # that pass's strength (0.3-0.5 keeps the composition)
    mode: str = "fg"  # fg | fg2blend | bg2blend | blend2bg | blend2fg | layers
    foreground: str | None = None  # condition images of the layer modes (paths or URLs)
    background: str | None = None
    blend: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """How the work is done; of these only `tta` decides pixels (`batch_size` and `decoder_sub_batch` may move
    low bits)."""

    batch_size: int = 1
    tta: bool = True
    decoder_sub_batch: int | None = None  # decoder images per call; None: 16 on GPU, 1 on CPU (measured)
    png_compress_level: int = 6  # canvases: zlib's RLE strategy at 1-8 (same file at any), full search at 9
    writer_threads: int | None = None  # threads that check, encode and write images; None: 2 on GPU, 0 on CPU
    images_per_folder: int = 10_000  # images go into numbered subfolders of at most this many files
    limit: int | None = None
    max_failures: int | None = None  # stop the run once more rows than this have failed
    overwrite: bool = False
    strict: bool = False
    safety_checker: bool = True  # False: never check, whatever the rows say
    log_format: str = "text"  # text | json
    # Where the shards run (docs/several_machines.md); none of these decides pixels or which rows are done.
    executor: str = "local"  # local: this process (or its launcher's processes) | ray: tasks on a Ray cluster
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a Ray cluster of this machine started for the run
    tasks: int | None = None  # shards of the table; None: 4 per worker the cluster has room for
    gpus_per_task: float | None = None  # None: 1 on a cluster with GPUs, else 0


@dataclass(frozen=True)
class TemplateConfig:
    """How prompts written as templates (Dynamic Prompts syntax) become prompts; plain prompts are kept."""

    combinatorial: bool = False  # one image per combination instead of a draw from the row's seed
    wildcards: str | None = None  # folder of `__name__` wildcard files (name.txt, .json, .yaml)
    combination_limit: int = 1000  # a row that gives more prompts is invalid


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    defaults: Defaults = field(default_factory=Defaults)
    run: RunConfig = field(default_factory=RunConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    sprites: SpriteSettings = field(default_factory=SpriteSettings)  # post-processing of the raw canvases

    def with_overrides(self, section: str, **values) -> Config:
        """A copy with the given non-None values set in `section` (how flags override the file)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        try:
            updated = replace(getattr(self, section), **values)
        except ValueError as exc:  # sprite settings check themselves
            raise ConfigError(f"command-line flags: {exc}") from None
        config = replace(self, **{section: updated})
        validate(config, source="command-line flags")
        return config


@dataclass(frozen=True)
class NotifyConfig:
    """How an unattended run reports itself (docs/unattended.md): webhooks, a health-check URL, metrics.

    Kept out of `Config` on purpose: `Config` is recorded in run.json, while webhook and ping URLs often
    carry their token in the path or query; and none of this decides which images are made.
    """

    webhooks: tuple[str, ...] = ()  # --notify URL: POST the run report to each when the run ends
    ping: str | None = None  # --ping URL: URL/start, then URL on success or URL/fail (healthchecks.io)
    metrics_file: str | None = None  # --metrics-file PATH.prom: Prometheus textfile, rewritten while running
    metrics_interval: float = 15.0  # --metrics-interval SECONDS between rewrites
    metrics_labels: dict[str, str] = field(default_factory=dict)  # on every sample, e.g. {job: nightly}
    # Delivery of webhooks; pings take half the timeout and backoff and one retry fewer (5 s, 0.5 s, 2).
    timeout: float = 10.0  # seconds per connect or read
    retries: int = 3  # further tries after a connection error, a timeout, 5xx or 429
    backoff: float = 1.0  # seconds before the first retry, doubled before each next one

    @property
    def active(self) -> bool:
        return bool(self.webhooks or self.ping or self.metrics_file)

    def with_overrides(self, **values) -> NotifyConfig:
        """A copy with the given values set; None and empty tuples (flags not given) keep the file's."""
        values = {k: v for k, v in values.items() if v is not None and v != ()}
        if not values:
            return self
        if "webhooks" in values:
            values["webhooks"] = tuple(values["webhooks"])
        notify = replace(self, **values)
        validate_notify(notify, source="command-line flags")
        return notify


def load_notify(path: str | os.PathLike | None) -> NotifyConfig:
    """The `notify:` section of a YAML config (the other sections are `load_config`'s)."""
    if path is None:
        return NotifyConfig()
    values = _read(Path(path)).get(NOTIFY) or {}
    notify = _section(NotifyConfig, values, f"{path}: {NOTIFY}")
    webhooks = notify.webhooks
    if isinstance(webhooks, str):
        webhooks = [webhooks]  # one URL written without a list
    if not isinstance(webhooks, (list, tuple)):
        raise ConfigError(f"{path}: {NOTIFY}.webhooks must be a list of URLs, got {type(webhooks).__name__}")
    notify = replace(notify, webhooks=tuple(webhooks), metrics_labels=notify.metrics_labels or {})
    validate_notify(notify, source=str(path))
    return notify


def validate_notify(notify: NotifyConfig, source: str) -> None:
    """Every URL http(s) with a host, a .prom metrics file, a positive interval, valid label names."""
    from .unattended_settings import check_labels, check_url

    try:
        for i, url in enumerate(notify.webhooks):
            check_url(_text(url, f"{NOTIFY}.webhooks[{i}]"), f"{NOTIFY}.webhooks[{i}]")
        if notify.ping is not None:
            check_url(_text(notify.ping, f"{NOTIFY}.ping"), f"{NOTIFY}.ping")
        if notify.metrics_file is not None:
            check_metrics_file(str(notify.metrics_file), f"{NOTIFY}.metrics_file")
        for name, least in (("metrics_interval", "> 0"), ("timeout", "> 0"), ("backoff", ">= 0")):
            value = getattr(notify, name)
            if not (_is_number(value) and (value > 0 or (value == 0 and least == ">= 0"))):
                raise ValueError(f"{NOTIFY}.{name} must be a number of seconds {least}, got {value!r}")
        if not (_is_int(notify.retries) and notify.retries >= 0):
            raise ValueError(f"{NOTIFY}.retries must be an integer >= 0, got {notify.retries!r}")
        if not isinstance(notify.metrics_labels, dict):
            raise ValueError(f"{NOTIFY}.metrics_labels must be a mapping of label names to values")
        check_labels(notify.metrics_labels)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a URL in quotes, got {type(value).__name__} {value!r}")
    return value


def check_metrics_file(path: str, what: str) -> str:
    """node_exporter's textfile collector reads only `*.prom` files: any other name would be ignored silently."""
    if not path.endswith(".prom"):
        raise ValueError(f"{what} must be a file name ending in .prom (node_exporter reads only those), got {path!r}")
    return path


def load_config(path: str | os.PathLike | None) -> Config:
    """Read a YAML config; relative model paths resolve against the file's folder."""
    if path is None:
        return Config()
    path = Path(path)
    data = _read(path)
    sections = {f.name for f in fields(Config)} | {NOTIFY}
    unknown = set(data) - sections
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(sections)}")
    kwargs = {}
    for name, cls in SECTIONS:
        kwargs[name] = _section(cls, data.get(name) or {}, f"{path}: {name}")
    config = Config(**kwargs)
    config = replace(config, model=_resolve_paths(_lora_tuple(config.model, path), path.parent))
    config = replace(config, defaults=_resolve_images(config.defaults, path.parent))
    folder = config.templates.wildcards
    if isinstance(folder, str) and folder.startswith(("./", "../")):  # next to the file, as model paths are
        config = replace(config, templates=replace(config.templates, wildcards=str((path.parent / folder).resolve())))
    validate(config, source=str(path))
    return config


SECTIONS = (("model", ModelConfig), ("defaults", Defaults), ("run", RunConfig), ("templates", TemplateConfig),
            ("sprites", SpriteSettings))  # fmt: skip


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(data, dict):
        names = ", ".join(name for name, _ in SECTIONS)
        raise ConfigError(f"{path}: expected a mapping with sections {names}, {NOTIFY}")
    return data


def _section(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return cls(**values)
    except ValueError as exc:  # sprite settings check themselves
        raise ConfigError(f"{where}: {exc}") from None


def _resolve_paths(model: ModelConfig, folder: Path) -> ModelConfig:
    """`./x` and `../x` in a config file mean paths next to that file; anything else is kept."""
    changes = {}
    for name in ("base", "base_config", "vae", "layerdiffuse", "unet_weights", "encoder_weights", "safety_checker"):
        value = getattr(model, name)
        if isinstance(value, str) and value.startswith(("./", "../")):
            changes[name] = str((folder / value).resolve())
    changes["loras"] = tuple(_resolve_lora_path(spec, folder) for spec in model.loras)
    return replace(model, **changes)


def _resolve_images(defaults: Defaults, folder: Path) -> Defaults:
    """Default input images written `./x` or `../x` in a config file are next to that file, as model paths."""
    changes = {}
    for name in ("image", "foreground", "background", "blend"):
        value = getattr(defaults, name)
        if isinstance(value, str) and value.startswith(("./", "../")):
            changes[name] = str((folder / value).resolve())
    return replace(defaults, **changes)


def check_conditional_weights(weights, source: str) -> None:
    """`model.conditional_weights`: a mapping of layer modes to file names or paths."""
    from .layer_inputs import CONDITIONS

    if not isinstance(weights, dict) or not all(isinstance(v, str) for v in weights.values()):
        raise ConfigError(f"{source}: model.conditional_weights must map modes to file names, got {weights!r}")
    unknown = sorted(set(weights) - set(CONDITIONS))
    if unknown:
        raise ConfigError(f"{source}: model.conditional_weights: unknown mode(s) {unknown}; use {sorted(CONDITIONS)}")


def _lora_tuple(model: ModelConfig, path: Path) -> ModelConfig:
    """`model.loras` is a list in YAML (one reference written alone is a list of one)."""
    loras = () if model.loras is None else model.loras
    if isinstance(loras, str):
        loras = [loras]
    if not isinstance(loras, (list, tuple)) or not all(isinstance(spec, str) for spec in loras):
        raise ConfigError(f"{path}: model.loras must be a list of PATH_OR_HUB_ID[:WEIGHT] texts, got {loras!r}")
    return replace(model, loras=tuple(loras))


def _resolve_lora_path(spec, folder: Path):
    from .lora_refs import LoraRef, LoraSpecError

    try:
        source = LoraRef.parse(spec).source
    except LoraSpecError:
        return spec  # validate() reports it
    if not source.startswith(("./", "../")):
        return spec
    return str((folder / source).resolve()) + spec.strip()[len(source) :]  # the weight as written


def validate(config: Config, source: str) -> None:
    m, d, r = config.model, config.defaults, config.run
    checks = [
        (m.injection in INJECTIONS, f"model.injection must be one of {INJECTIONS}, got {m.injection!r}"),
        (m.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {m.dtype!r}"),
        (m.scheduler in SCHEDULER_NAMES, f"model.scheduler must be one of {SCHEDULER_NAMES}, got {m.scheduler!r}"),
        (_is_number(m.strength), f"model.strength must be a number, got {m.strength!r}"),
        (_is_int(r.batch_size) and r.batch_size >= 1, f"run.batch_size must be >= 1, got {r.batch_size!r}"),
        (
            r.decoder_sub_batch is None or (_is_int(r.decoder_sub_batch) and r.decoder_sub_batch >= 1),
            "run.decoder_sub_batch must be >= 1 (or null for the device's default)",
        ),  # fmt: skip
        (r.png_compress_level in range(10), f"run.png_compress_level must be 0-9, got {r.png_compress_level!r}"),
        (
            r.writer_threads is None or (_is_int(r.writer_threads) and r.writer_threads >= 0),
            f"run.writer_threads must be >= 0 (0: in turn with generation; null: by device), got {r.writer_threads!r}",
        ),  # fmt: skip
        (_is_int(r.images_per_folder) and r.images_per_folder >= 1, "run.images_per_folder must be >= 1"),
        (r.limit is None or (_is_int(r.limit) and r.limit >= 0), f"run.limit must be >= 0, got {r.limit!r}"),
        (r.max_failures is None or (_is_int(r.max_failures) and r.max_failures >= 0), "run.max_failures must be >= 0"),
        (r.log_format in LOG_FORMATS, f"run.log_format must be one of {LOG_FORMATS}, got {r.log_format!r}"),
        *_executor_checks(r),
        (_is_int(d.seed) and 0 <= d.seed < 2**64, f"defaults.seed must be an integer in [0, 2^64), got {d.seed!r}"),
        *_template_checks(config.templates),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    check_loras(m.loras, source)
    check_conditional_weights(m.conditional_weights if m.conditional_weights is not None else {}, source)
    check_defaults(d, source)


def check_loras(specs, source: str) -> None:
    """Every run LoRA reference reads as `PATH_OR_HUB_ID[:WEIGHT]` (finding the files is the run's job)."""
    from .lora_refs import LoraRef, LoraSpecError

    if not isinstance(specs, (list, tuple)) or not all(isinstance(spec, str) for spec in specs):
        raise ConfigError(f"{source}: model.loras must be a list of PATH_OR_HUB_ID[:WEIGHT] texts, got {specs!r}")
    for spec in specs:
        try:
            LoraRef.parse(spec)
        except LoraSpecError as exc:
            raise ConfigError(f"{source}: model.loras: {exc}") from None


def _executor_checks(r: RunConfig) -> list[tuple[bool, str]]:
    return [
        (r.executor in EXECUTORS, f"run.executor must be one of {EXECUTORS}, got {r.executor!r}"),
        (r.ray_address is None or isinstance(r.ray_address, str), "run.ray_address must be an address in quotes"),
        (r.tasks is None or (_is_int(r.tasks) and r.tasks >= 1), f"run.tasks must be >= 1, got {r.tasks!r}"),
        (
            r.gpus_per_task is None or (_is_number(r.gpus_per_task) and r.gpus_per_task >= 0),
            f"run.gpus_per_task must be a number >= 0 (fractions share a GPU), got {r.gpus_per_task!r}",
        ),
    ]


def _template_checks(t: TemplateConfig) -> list[tuple[bool, str]]:
    folder = t.wildcards
    return [
        (isinstance(t.combinatorial, bool), f"templates.combinatorial must be true or false, got {t.combinatorial!r}"),
        (
            folder is None or (isinstance(folder, str) and Path(folder).expanduser().is_dir()),
            f"templates.wildcards must be a folder of wildcard files (name.txt, ...); {folder!r} is not a folder",
        ),
        (
            _is_int(t.combination_limit) and 1 <= t.combination_limit <= MAX_COMBINATION_LIMIT,
            f"templates.combination_limit must be an integer from 1 to {MAX_COMBINATION_LIMIT:,}, "
            f"got {t.combination_limit!r}",
        ),
    ]


def check_defaults(d: Defaults, source: str) -> None:
    """Defaults obey the same rules as cells, so a bad default fails before any row runs."""
    for name, (parse, value) in column_rules(d).items():
        if value is None or name == "prompt":
            continue  # no default to check: seeds are derived, prompts come from the rows
        try:
            parse(value)
        except CellError as exc:
            raise ConfigError(f"{source}: default {name} = {value!r} {exc}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_dict(config: Config) -> dict:
    """Plain values (tuples as lists), as YAML and JSON write them."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
