"""A look at a run, from its manifest alone: a self-contained HTML gallery and a contact sheet.

Both show transparency over a checkerboard (or a chosen colour). Thumbnails are cached in
`DIR/thumbs/` under names that carry the source's sha256, so they are rebuilt only when it changes.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections import Counter
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageFont

from .manifest import MANIFEST_JSONL, latest_records, read_manifest, read_run_info
from .writer import write_atomic

THUMBS = "thumbs"
REPORT = "report.html"
CONTACT_SHEET = "contact_sheet.png"
CHECKER_COLOURS = ((204, 204, 204), (255, 255, 255))
BACKGROUND_HELP = "checker, white, black or #rrggbb"


def parse_background(text: str) -> str:
    if text in ("checker", "white", "black") or re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return text.lower()
    raise ValueError(f"background must be {BACKGROUND_HELP}, got {text!r}")


def run_records(out_dir: Path) -> list[dict]:
    """The merged manifest, or for a run still under way, every row's latest record so far."""
    if (out_dir / MANIFEST_JSONL).exists():
        return read_manifest(out_dir)
    latest = latest_records(out_dir)
    return [latest[k] for k in read_run_info(out_dir)["keys"] if k in latest]


def build_report(out_dir: Path, background: str = "checker", sheet_count: int = 64, thumb_size: int = 192):
    """Write DIR/report.html and DIR/contact_sheet.png; returns their paths."""
    records = run_records(out_dir)
    thumbs = {r["id"]: thumbnail(out_dir, r, thumb_size) for r in records if _has_image(out_dir, r)}
    page = render_html(records, thumbs, _summary(out_dir, records), background)
    write_atomic(out_dir / REPORT, page.encode("utf-8"))
    sheet = contact_sheet(out_dir, [r for r in records if r["id"] in thumbs][:sheet_count], background)
    write_atomic(out_dir / CONTACT_SHEET, sheet)
    return out_dir / REPORT, out_dir / CONTACT_SHEET


def _has_image(out_dir: Path, record: dict) -> bool:
    return record.get("status") == "ok" and (out_dir / record["image"]["url"]).is_file()


def thumbnail(out_dir: Path, record: dict, size: int) -> str:
    """Path (relative to DIR) of the record's thumbnail, made only if its source changed."""
    folder = out_dir / THUMBS
    folder.mkdir(exist_ok=True)
    name = f"{record['id']}.{(record.get('sha256') or 'unknown')[:16]}.{size}.png"
    if not (folder / name).exists():
        for stale in folder.glob(f"{record['id']}.*.png"):
            stale.unlink()
        with Image.open(out_dir / record["image"]["url"]) as image:
            image = image.convert("RGBA")
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            image.save(folder / name, format="PNG", compress_level=1)
    return f"{THUMBS}/{name}"


def _summary(out_dir: Path, records: list[dict]) -> dict:
    statuses = Counter(r.get("status") for r in records)
    ok = [r for r in records if r.get("status") == "ok"]
    seconds = sum(r.get("generation_seconds") or 0 for r in ok)
    try:
        info = read_run_info(out_dir)
    except (OSError, ValueError):
        info = {}
    return {
        "rows": len(records),
        "ok": statuses.get("ok", 0),
        "flagged": sum(r.get("has_nsfw_concepts") is True for r in records),
        "failed": statuses.get("failed", 0),
        "invalid": statuses.get("invalid", 0),
        "generation_seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(ok), 3) if ok else None,
        "started_at": info.get("started_at"),
        "input": info.get("input"),
        "model": (ok[0].get("model") or {}) if ok else {},
        "sizes": sorted({f"{r['width']}x{r['height']}" for r in ok}),
        "steps": sorted({r["num_inference_steps"] for r in ok}),
        "guidance": sorted({r["guidance_scale"] for r in ok}),
    }


def _card(record: dict, thumbs: dict[str, str]) -> dict:
    flagged = record.get("has_nsfw_concepts") is True
    status = "flagged" if flagged else record.get("status") or "unknown"
    card = {"id": record["id"], "prompt": record.get("prompt") or "", "seed": record.get("seed"), "status": status,
            "error": record.get("error") or ("flagged by the safety checker" if flagged else "")}  # fmt: skip
    if record["id"] in thumbs:
        card.update(thumb=thumbs[record["id"]], url=record["image"]["url"])
    if card["status"] == "invalid" and not card["prompt"]:
        card["prompt"] = (record.get("input") or {}).get("prompt") or ""
    return card


def _background_css(background: str) -> str:
    if background == "checker":
        light, dark = (f"rgb{c}" for c in reversed(CHECKER_COLOURS))
        return f"background: repeating-conic-gradient({dark} 0 25%, {light} 0 50%) 0 0 / 16px 16px;"
    return f"background: {background};"


def render_html(records: list[dict], thumbs: dict[str, str], summary: dict, background: str) -> str:
    cards = [_card(r, thumbs) for r in records]
    data = json.dumps(cards, ensure_ascii=False).replace("</", "<\\/")  # prompts cannot close the script
    template = (Path(__file__).with_name("report_template.html")).read_text(encoding="utf-8")
    return (
        template.replace("/*BACKGROUND*/", _background_css(background))
        .replace("<!--SUMMARY-->", _summary_html(summary))
        .replace("/*CARDS*/[]", data)
    )


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


def contact_sheet(out_dir: Path, records: list[dict], background: str, tile: int = 256, label: int = 22) -> bytes:
    """PNG bytes: the images in a grid over the background, ids under each tile."""
    columns = max(1, math.ceil(math.sqrt(len(records))))
    rows = max(1, math.ceil(len(records) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for i, record in enumerate(records):
        left, top = (i % columns) * tile, (i // columns) * (tile + label)
        with Image.open(out_dir / record["image"]["url"]) as image:
            image = _scale_to_fit(image.convert("RGBA"), tile)
        canvas = background_tile(tile, background)
        canvas.alpha_composite(image, ((tile - image.width) // 2, (tile - image.height) // 2))
        sheet.paste(canvas.convert("RGB"), (left, top))
        draw.text((left + 4, top + tile + 3), _fit(draw, record["id"], font, tile - 8), fill="black", font=font)
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
