"""Every path an output folder holds, relative to it: the one place that names them.

images/00000/<key>.png          the images (numbered subfolders; older flat folders stay flat)
sprites/<label>/00000/<key>.png sprites derived from them
atlas/<label>/<name>.png|.json  sheets packed from the sprites (`atlas DIR`)
parts/<stem>.jsonl              append-only record logs, one per process and run (+ .context.json)
parts/keys.parquet, parts/checkpoint.parquet   the table's keys; the merge's resume point
manifest.parquet, manifest.jsonl, run.json     the merged manifest and the last run's settings
stats/<stem>.json               per-process statistics
report.html, report/page-*.html, thumbs/, contact_sheet.png   the report
.lock, .lock-shard-I-of-N       who holds the folder
"""

from __future__ import annotations

from datetime import datetime, timezone

IMAGES = "images"
SPRITES = "sprites"
ATLAS = "atlas"
PARTS = "parts"
KEYS = f"{PARTS}/keys.parquet"
CHECKPOINT = f"{PARTS}/checkpoint.parquet"
MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_JSONL = "manifest.jsonl"
RUN_INFO = "run.json"
STATS = "stats"
REPORT = "report.html"
REPORT_PAGES = "report"
THUMBS = "thumbs"
CONTACT_SHEET = "contact_sheet.png"
LOCK = ".lock"


def image_url(position: int, key: str, per_folder: int) -> str:
    """Where a new image goes: numbered subfolders of at most `per_folder` files, by the record's place."""
    return f"{IMAGES}/{position // per_folder:05d}/{key}.png"


def sprite_url(image_url: str, label: str) -> str:
    """`images/00000/key.png` -> `sprites/<label>/00000/key.png`; a flat `images/key.png` stays flat."""
    relative = image_url.split("/", 1)[1] if image_url.startswith(f"{IMAGES}/") else image_url.rsplit("/", 1)[-1]
    return f"{SPRITES}/{label}/{relative}"


def atlas_folder(label: str) -> str:
    return f"{ATLAS}/{label}"


def thumb_url(image_url: str, sha256: str | None, size: int) -> str:
    """`thumbs/<folder>/<key>.sha256-<first 16 hex>.<size>.png`: a changed image never finds an old one."""
    folder, _, file = image_url.removeprefix(f"{IMAGES}/").rpartition("/")
    name = f"{file.removesuffix('.png')}.sha256-{(sha256 or 'unknown')[:16]}.{size}.png"
    return f"{THUMBS}/{folder}/{name}" if folder else f"{THUMBS}/{name}"


def report_page(number: int) -> str:
    return REPORT if number == 1 else f"{REPORT_PAGES}/page-{number:05d}.html"


def part_stem(rank: int, world_size: int) -> str:
    """A process's part name; names sort by start time, so later parts win."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-rank{rank:05d}-of-{world_size:05d}"


def part_log(stem: str, segment: int | None = None) -> str:
    """A part's log; on object stores it goes up in numbered segments."""
    return f"{PARTS}/{stem}.jsonl" if segment is None else f"{PARTS}/{stem}.{segment:06d}.jsonl"


def part_context(stem: str) -> str:
    return f"{PARTS}/{stem}.context.json"


def stats_file(stem: str) -> str:
    return f"{STATS}/{stem}.json"


def shard_lock(index: int, count: int) -> str:
    return f"{LOCK}-shard-{index}-of-{count}"


def swept_trees() -> tuple[tuple[str, int], ...]:
    """(folder, depth) of every tree a command writes into: the folder and depth - 1 levels below it."""
    return ("", 2), (IMAGES, 2), (SPRITES, 3), (THUMBS, 2), (ATLAS, 2)
