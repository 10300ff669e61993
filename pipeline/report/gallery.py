"""A look at a run, from its manifest alone: a self-contained, paginated HTML gallery and a contact sheet.

Both show transparency over a checkerboard (or a chosen colour). Thumbnails are cached in `DIR/thumbs/`
(the same subfolders as the images) under names that carry the source's sha256: they are found with one
listing per folder, made in parallel only when missing or stale, and the gallery is cut into pages, so a
report of a million rows takes time and memory in proportion to what changed and to one page.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageColor, ImageDraw, ImageFont

from ..common.storage import Storage
from ..folder.layout import CONTACT_SHEET, MANIFEST_PARQUET, REPORT, report_page, thumb_url
from ..folder.manifest import folder_state, read_keys, read_run_info
from ..folder.parts import record_from_part
from ..folder.repair import repair_manifests
from ..folder.schema import Status, json_record
from ..folder.sweep import sweep_temporaries

CHECKER_COLOURS = ((204, 204, 204), (255, 255, 255))
BACKGROUND_HELP = "checker, white, black or #rrggbb"
PAGE_SIZE = 1000
EXAMPLES = 10  # ids of missing or damaged images named in the command's message


def parse_background(text: str) -> str:
    if text in ("checker", "white", "black") or re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return text.lower()
    raise ValueError(f"background must be {BACKGROUND_HELP}, got {text!r}")


def run_records(storage: Storage, chunk: int = PAGE_SIZE):
    """(row count, the records in input order chunk by chunk): the merged manifest, or for a run still under
    way, every row's latest record so far."""
    repair_manifests(storage)  # a damaged manifest is merged again first
    if storage.exists(MANIFEST_PARQUET):
        manifest = pq.ParquetFile(storage.path(MANIFEST_PARQUET), filesystem=storage.fs)
        batches = manifest.iter_batches(batch_size=chunk)
        return manifest.metadata.num_rows, ([json_record(r) for r in batch.to_pylist()] for batch in batches)
    import pyarrow.compute as pc

    keys, _ = read_keys(storage)
    state = folder_state(storage)
    ordered = state.take(pc.drop_null(pc.index_in(keys, state.column("id"))))
    slices = (ordered.slice(i, chunk) for i in range(0, ordered.num_rows, chunk))
    return ordered.num_rows, ([record_from_part(r) for r in part.to_pylist()] for part in slices)


@dataclass(frozen=True)
class Built:
    page: str  # the first page's path (or URL)
    sheet: str  # the contact sheet's
    unusable: int  # images recorded but missing or damaged: their cards say so
    examples: tuple[str, ...]  # the first ids of those


def build_report(storage: Storage, background: str = "checker", sheet_count: int = 64, thumb_size: int = 192,
                 page_size: int = PAGE_SIZE) -> Built:  # fmt: skip
    """Write DIR/report.html (the first page and the run summary), DIR/report/page-*.html and
    DIR/contact_sheet.png. An image that is missing or damaged gets a card that says so, not a thumbnail."""
    sweep_temporaries(storage)
    total, chunks = run_records(storage, page_size)
    pages = max(1, math.ceil(total / page_size))
    thumbs = Thumbnails(storage, thumb_size)
    summary, first, tiles, unusable, examples = _Summary(), None, [], 0, []
    for number, records in enumerate(chunks, 1):
        summary.add(records)
        found, problems = thumbs.for_records(records)
        tiles += sheet_tiles(storage, [r for r in records if r["id"] in found], sheet_count - len(tiles), problems)
        found = {key: name for key, name in found.items() if key not in problems}
        unusable += len(problems)
        examples += list(problems)[: EXAMPLES - len(examples)]
        if number == 1:
            first = (records, found, problems)
        else:
            page = render_html(records, found, "", background, number, pages, base="../", problems=problems)
            storage.write(report_page(number), page.encode("utf-8"))
    records, found, problems = first or ([], {}, {})
    summary_html = _summary_html(summary.facts(_info(storage)))
    page = render_html(records, found, summary_html, background, 1, pages, problems=problems)
    storage.write(REPORT, page.encode("utf-8"))
    storage.write(CONTACT_SHEET, contact_sheet(tiles, background))
    return Built(storage.shown(REPORT), storage.shown(CONTACT_SHEET), unusable, tuple(examples))


def _info(storage: Storage) -> dict:
    try:
        return read_run_info(storage)
    except (OSError, ValueError):
        return {}


class Thumbnails:
    """Cached thumbnails, named by the sha256 of the image they were made from: one listing per image and
    thumbnail folder, then only the missing ones are made, each from an image whose bytes match its record."""

    def __init__(self, storage: Storage, size: int):
        self.storage, self.size = storage, size
        self._listings: dict[str, dict[str, int]] = {}

    def for_records(self, records: list[dict]) -> tuple[dict[str, str], dict[str, ImageProblem]]:
        """({id: thumbnail path relative to DIR} of the records whose image is in place, {id: what is wrong}
        of the records whose image is missing or damaged); thumbnails are made where missing, stale ones go."""
        recorded = [r for r in records if _has_image(r)]
        self._forget_other_folders(recorded)
        problems = {r["id"]: p for r in recorded if (p := self._listed_problem(r))}
        wanted = {r["id"]: self.name(r, r.get("sha256")) for r in recorded if r["id"] not in problems}
        missing = [r for r in recorded if r["id"] in wanted and not self._listed(wanted[r["id"]])]
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # hashing, decoding and resizing release the GIL
            made = dict(zip([r["id"] for r in missing], pool.map(self.make, missing), strict=True))
        problems.update({key: problem for key, problem in made.items() if problem})
        return {key: name for key, name in wanted.items() if key not in problems}, problems

    def name(self, record: dict, sha256: str | None) -> str:
        return thumb_url(record["image"]["url"], sha256, self.size)

    def _listing(self, folder: str) -> dict[str, int]:
        if folder not in self._listings:
            self._listings[folder] = self.storage.sizes(folder)
        return self._listings[folder]

    def _listed(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        return name in self._listing(folder)

    def _forget_other_folders(self, records: list[dict]) -> None:
        """Pages go through the folders in order: only the listings of this page's folders are kept."""
        images = {r["image"]["url"].rpartition("/")[0] for r in records}
        thumbs = {self.name(r, None).rpartition("/")[0] for r in records}
        self._listings = {f: names for f, names in self._listings.items() if f in images | thumbs}

    def _listed_problem(self, record: dict) -> ImageProblem | None:
        """Missing, or of another size than its record says (one listing per folder, no file opened)."""
        url = record["image"]["url"]
        folder, _, name = url.rpartition("/")
        size, recorded = self._listing(folder).get(name), record["image"].get("file_size")
        if size is None:
            return ImageProblem.missing(url)
        if recorded is not None and size != recorded:
            return ImageProblem.damaged(url, f"has {size} bytes, its record {recorded}")
        return None

    def make(self, record: dict) -> ImageProblem | None:
        """Write the thumbnail and remove the stale ones of the same image; what is wrong with the image, if
        its bytes cannot be read, differ from its record or are no image."""
        try:
            digest, image = read_image(self.storage, record)
        except ImageProblem as problem:
            return problem
        with image:
            image = image.convert("RGBA")
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
        name = self.name(record, digest)
        folder, _, file = name.rpartition("/")
        self.storage.write(name, buffer.getvalue(), moment="thumbnail_temp_written")
        stem = file.rsplit(".", 3)[0]
        for stale in [n for n in self._listing(folder) if n.rsplit(".", 3)[0] == stem and n != file]:
            self.storage.remove(f"{folder}/{stale}")
        return None


class ImageProblem(ValueError):
    """A recorded image that is missing or damaged; `label` is what its card shows instead of a thumbnail."""

    def __init__(self, label: str, message: str):
        super().__init__(f"{label}: {message}; rerun generate with --verify to make it again")
        self.label = label

    @classmethod
    def missing(cls, url: str) -> ImageProblem:
        return cls("image missing", url)

    @classmethod
    def damaged(cls, url: str, why: str) -> ImageProblem:
        return cls("image damaged", f"{url} {why}")


def read_image(storage: Storage, record: dict) -> tuple[str, Image.Image]:
    """(sha256 of its bytes, the decoded image) of a record's image; ImageProblem if it is missing, differs
    from its record or cannot be decoded."""
    url = record["image"]["url"]
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ImageProblem.missing(url) from None
    digest = hashlib.sha256(data).hexdigest()
    if record.get("sha256") and digest != record["sha256"]:
        raise ImageProblem.damaged(url, f"is not the image its record names (sha256 {digest[:16]}...)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageProblem.damaged(url, f"cannot be decoded ({exc})") from None
    return digest, image


def _has_image(record: dict) -> bool:
    return record.get("status") == Status.OK.value and bool(record.get("image"))


class _Summary:
    """The run summary, added up page by page."""

    def __init__(self):
        self.statuses: Counter = Counter()
        self.flagged, self.seconds, self.model = 0, 0.0, None
        self.sizes, self.steps, self.guidance = set(), set(), set()

    def add(self, records: list[dict]) -> None:
        for r in records:
            self.statuses[r.get("status")] += 1
            self.flagged += r.get("has_nsfw_concepts") is True
            if r.get("status") == Status.OK.value:
                self.seconds += r.get("generation_seconds") or 0
                self.model = self.model or r.get("model") or {}
                self.sizes.add(f"{r['width']}x{r['height']}")
                self.steps.add(r["num_inference_steps"])
                self.guidance.add(r["guidance_scale"])

    def facts(self, info: dict) -> dict:
        ok = self.statuses.get(Status.OK.value, 0)
        return {
            "rows": sum(self.statuses.values()),
            "ok": ok,
            "flagged": self.flagged,
            "failed": self.statuses.get(Status.FAILED.value, 0),
            "invalid": self.statuses.get(Status.INVALID.value, 0),
            "generation_seconds": round(self.seconds, 2),
            "seconds_per_image": round(self.seconds / ok, 3) if ok else None,
            "started_at": info.get("started_at") or info.get("finished_at"),
            "input": info.get("input"),
            "model": self.model or {},
            "sizes": sorted(self.sizes),
            "steps": sorted(self.steps),
            "guidance": sorted(self.guidance),
        }


def _card(record: dict, thumbs: dict[str, str], base: str = "", problem: ImageProblem | None = None) -> dict:
    flagged = record.get("has_nsfw_concepts") is True
    status = "flagged" if flagged else record.get("status") or "unknown"
    card = {"id": record["id"], "prompt": record.get("prompt") or "", "seed": record.get("seed"), "status": status,
            "error": record.get("error") or ("flagged by the safety checker" if flagged else "")}  # fmt: skip
    if record["id"] in thumbs:
        card.update(thumb=base + thumbs[record["id"]], url=base + record["image"]["url"])
    elif problem:
        card.update(error=str(problem), placeholder=problem.label)
    if card["status"] == "invalid" and not card["prompt"]:
        card["prompt"] = (record.get("input") or {}).get("prompt") or ""
    return card


def _background_css(background: str) -> str:
    if background == "checker":
        light, dark = (f"rgb{c}" for c in reversed(CHECKER_COLOURS))
        return f"background: repeating-conic-gradient({dark} 0 25%, {light} 0 50%) 0 0 / 16px 16px;"
    return f"background: {background};"


def render_html(records: list[dict], thumbs: dict[str, str], summary: str, background: str, page: int = 1,
                pages: int = 1, base: str = "", problems: dict[str, ImageProblem] | None = None) -> str:  # fmt: skip
    """One gallery page; `base` leads from the page's folder back to DIR; `problems`: {id: what is wrong with
    its image}."""
    problems = problems or {}
    cards = [_card(r, thumbs, base, problems.get(r["id"])) for r in records]
    filled = {"/*BACKGROUND*/": _background_css(background), "<!--SUMMARY-->": summary,
              "<!--PAGER-->": _pager(page, pages, base), "/*CARDS*/[]": script_json(cards)}  # fmt: skip
    template = (Path(__file__).with_name("template.html")).read_text(encoding="utf-8")
    # One pass: text put in is never searched again (a summary holding `/*CARDS*/[]` stays text).
    return PLACEHOLDERS.sub(lambda match: filled[match.group()], template)


PLACEHOLDERS = re.compile(r"/\*BACKGROUND\*/|<!--SUMMARY-->|<!--PAGER-->|/\*CARDS\*/\[\]")
SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value) -> str:
    """JSON to place inside <script>: no `<` at all, so no text can close the element or open a comment or
    script in it (`</script`, `<!--`, `<script` switch the HTML parser's script states); `>` and `&`, and
    the line separators that older JavaScript engines end lines at, are escaped as well. Each escape is a
    JSON string escape of the same character, so the data parses back unchanged."""
    text = json.dumps(value, ensure_ascii=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: SCRIPT_ESCAPES[m.group()], text)


def _pager(page: int, pages: int, base: str) -> str:
    if pages == 1:
        return ""
    steps = ((1, "first"), (page - 1, "previous"), (page + 1, "next"), (pages, "last"))
    links = [f'<a href="{base}{report_page(n)}">{label}</a>' for n, label in steps if 1 <= n <= pages and n != page]
    return f'<span class="pager">page {page} of {pages} · {" · ".join(links)}</span>'


def _summary_html(s: dict) -> str:
    model = s["model"]
    facts = [
        ("rows", s["rows"]), ("ok", s["ok"]), ("flagged", s["flagged"]), ("failed", s["failed"]),
        ("invalid", s["invalid"]), ("generation time", f"{s['generation_seconds']} s"),
        ("per image", f"{s['seconds_per_image']} s" if s["seconds_per_image"] is not None else "-"),
        ("model", f"{model.get('base', '-')} · LayerDiffuse {model.get('injection', '-')}"),
        ("scheduler / dtype", f"{model.get('scheduler', '-')} / {model.get('dtype', '-')}"),
        ("sizes", ", ".join(s["sizes"]) or "-"), ("steps", ", ".join(map(str, s["steps"])) or "-"),
        ("guidance", ", ".join(f"{g:g}" for g in s["guidance"]) or "-"), ("started", s["started_at"] or "-"),
        ("input", s["input"] or "-"),
    ]  # fmt: skip
    return "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd></div>" for k, v in facts)


def sheet_tiles(storage: Storage, records: list[dict], count: int, problems: dict[str, ImageProblem],
                tile: int = 256) -> list[tuple[str, Image.Image]]:  # fmt: skip
    """(id, image scaled to fit a tile) of the first `count` records whose image reads back as recorded; what is
    wrong with the others goes into `problems`."""
    tiles = []
    for record in records:
        if len(tiles) >= count:
            break
        try:
            _, image = read_image(storage, record)
        except ImageProblem as problem:
            problems[record["id"]] = problem
            continue
        with image as decoded:
            tiles.append((record["id"], _scale_to_fit(decoded.convert("RGBA"), tile)))
    return tiles


def contact_sheet(tiles: list[tuple[str, Image.Image]], background: str, tile: int = 256, label: int = 22) -> bytes:
    """PNG bytes: the tiles in a grid over the background, ids under each."""
    columns = max(1, math.ceil(math.sqrt(len(tiles))))
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for i, (key, image) in enumerate(tiles):
        left, top = (i % columns) * tile, (i // columns) * (tile + label)
        canvas = background_tile(tile, background)
        canvas.alpha_composite(image, ((tile - image.width) // 2, (tile - image.height) // 2))
        sheet.paste(canvas.convert("RGB"), (left, top))
        draw.text((left + 4, top + tile + 3), _fit(draw, key, font, tile - 8), fill="black", font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _scale_to_fit(image: Image.Image, size: int) -> Image.Image:
    """Largest size that fits the tile; small sprites scale up with crisp (nearest) pixels."""
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return image.resize(shape, resample)


def background_tile(size: int, background: str, cell: int = 16) -> Image.Image:
    if background != "checker":
        return Image.new("RGBA", (size, size), ImageColor.getrgb(background) + (255,))
    tile = Image.new("RGBA", (size, size), CHECKER_COLOURS[1] + (255,))
    draw = ImageDraw.Draw(tile)
    for y in range(0, size, cell):
        for x in range(0, size, cell):
            if (x // cell + y // cell) % 2 == 0:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=CHECKER_COLOURS[0] + (255,))
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text
