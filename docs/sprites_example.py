"""Make docs/sprites-example.png: the README's "Sprites for a game" example run with the tiny test model.

    .venv/bin/python docs/sprites_example.py

Runs the README's table, wildcard file and commands (with `--config configs/tiny.yaml`) in a temporary folder,
then draws, over a checkerboard so that the alpha shows: one raw canvas, its 64-pixel sprite and the 64-pixel
sheet (both enlarged 2x with crisp pixels).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "sprites-example.png"


def readme_example() -> tuple[str, str, list[list[str]]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Sprites for a game\n") :]
    section = section[: section.index("\n## ", 5)]

    def block(language: str) -> str:
        return re.search(rf"^```{language}\n(.*?)^```", section, re.S | re.M).group(1)

    lines = [line for line in block("bash").splitlines() if line.startswith("layerdiffuse ")]
    return block("csv"), block("text"), [shlex.split(line)[1:] for line in lines[:2]]


def run_example(folder: Path) -> Path:
    table, metals, (generate, atlas) = readme_example()
    (folder / "items.csv").write_text(table)
    (folder / "wildcards").mkdir()
    (folder / "wildcards" / "metals.txt").write_text(metals)
    command = [sys.executable, "-m", "pipeline"]
    subprocess.run([*command, *generate, "--config", str(REPO / "configs" / "tiny.yaml")], cwd=folder, check=True)
    subprocess.run([*command, *atlas], cwd=folder, check=True)
    return folder / "out"


def checker(size: tuple[int, int], cell: int = 8) -> Image.Image:
    board = Image.new("RGBA", size, (204, 204, 204, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], cell):
        for x in range((y // cell) % 2 * cell, size[0], 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(255, 255, 255, 255))
    return board


def shown(path: Path, scale: int) -> Image.Image:
    with Image.open(path) as image:
        image = image.convert("RGBA")
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return Image.alpha_composite(checker(image.size), image)


def figure(out: Path) -> Image.Image:
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    sprite = next(s for s in record["sprites"] if s["label"] == "64")
    panels = [
        (f"raw canvas {record['id']} (256x256)", shown(out / record["image"]["url"], 1)),
        ("its 64x64 sprite (x2)", shown(out / sprite["url"], 2)),
        ("atlas/64/sheet-0.png (x2)", shown(out / "atlas" / "64" / "sheet-0.png", 2)),
    ]
    margin, caption = 12, 18
    width = sum(p.width for _, p in panels) + margin * (len(panels) + 1)
    height = max(p.height for _, p in panels) + caption + 2 * margin
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw, x = ImageDraw.Draw(canvas), margin
    for title, panel in panels:
        draw.text((x, margin), title, fill=(0, 0, 0))
        canvas.paste(panel.convert("RGB"), (x, margin + caption))
        x += panel.width + margin
    return canvas


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        picture = figure(run_example(Path(folder)))
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size // 1024} KB, {picture.width}x{picture.height})")


if __name__ == "__main__":
    main()
