"""The run report: HTML gallery in a real headless Chromium, contact sheet pixels, thumbnail cache."""

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.common.storage import Storage
from pipeline.folder.manifest import merge, write_keys
from pipeline.folder.parts import PartWriter
from pipeline.report.gallery import CHECKER_COLOURS, build_report

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20)]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def sprite(colour, size=(64, 64)) -> bytes:
    """Left half opaque `colour`, right half fully transparent."""
    data = np.zeros((size[1], size[0], 4), np.uint8)
    data[:, : size[0] // 2] = (*colour, 255)
    buffer = io.BytesIO()
    Image.fromarray(data, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def record(key, status="ok", png=None, **fields):
    base = {"id": key, "status": status, "error": None, "prompt": f"sprite {key}", "seed": 1, "width": 64,
            "height": 64, "num_inference_steps": 2, "guidance_scale": 8.0, "has_nsfw_concepts": None,
            "image": None, "sha256": None, "generation_seconds": 0.5,
            "model": {"base": "tiny", "injection": "attn"}}  # fmt: skip
    if png is not None:
        base["image"] = {"url": f"images/{key}.png", "content_type": "image/png", "file_name": f"{key}.png",
                         "file_size": len(png), "width": 64, "height": 64}  # fmt: skip
        base["sha256"] = hashlib.sha256(png).hexdigest()
    return {**base, **fields}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    records = []
    for i, colour in enumerate(COLOURS):
        png = sprite(colour)
        (tmp_path / "images" / f"s{i}.png").write_bytes(png)
        records.append(record(f"s{i}", png=png))
    blank = sprite((0, 0, 0))
    (tmp_path / "images" / "nsfw.png").write_bytes(blank)
    records.append(record("nsfw", png=blank, has_nsfw_concepts=True))
    records.append(record("broken", status="failed", error="RuntimeError: out of memory"))
    records.append(record("bad", status="invalid", prompt=None, error="t.csv: row 7, column 'seed': value 'x' ..."))
    records.append(record("xss", prompt="</script><script>document.title='pwned'</script><b>bold</b>",
                          status="failed", error="<img src=x onerror=alert(1)>"))  # fmt: skip
    record_run(tmp_path, records)
    return tmp_path


def record_run(folder: Path, records: list[dict], keys: list[str] | None = None) -> None:
    """The records as a run leaves them: a part log, the table's keys, the merged manifest."""
    storage = Storage(folder)
    with PartWriter(storage, f"2026{len(list(folder.glob('parts/*.jsonl'))):06d}-rank00000-of-00001") as part:
        for item in records:
            part.append(item)
    write_keys(storage, keys or [r["id"] for r in records], [])
    assert merge(storage) is not None


def test_contact_sheet_tiles_ids_and_checkerboard(run_dir):
    sheet_path = build_report(Storage(run_dir)).sheet
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    # 5 images with files (4 sprites + the flagged placeholder): a 3 x 2 grid of 256 px tiles + 22 px labels
    assert sheet.shape == (2 * (256 + 22), 3 * 256, 3)
    for i, colour in enumerate(COLOURS):
        left, top = (i % 3) * 256, (i // 3) * 278
        assert tuple(sheet[top + 128, left + 64]) == colour  # opaque half, where the tile put it
        board = {tuple(sheet[top + y, left + 200]) for y in (8, 24)}  # transparent half: two checker cells
        assert board == set(CHECKER_COLOURS)
        label = sheet[top + 257 : top + 277, left : left + 60]
        assert (label < 100).any()  # the id is written under the tile
    assert tuple(sheet[278 + 128, 256 + 200]) in CHECKER_COLOURS  # the flagged placeholder is all board


def test_solid_background(run_dir):
    CliRunner().invoke(cli, ["report", str(run_dir), "--background", "#102030"], catch_exceptions=False)
    sheet = np.asarray(Image.open(run_dir / "contact_sheet.png").convert("RGB"))
    assert tuple(sheet[128, 200]) == (16, 32, 48) and tuple(sheet[128, 64]) == COLOURS[0]
    assert "background: #102030" in (run_dir / "report.html").read_text()


def test_thumbnails_are_rebuilt_only_when_their_source_changes(run_dir):
    build_report(Storage(run_dir))
    thumbs = {p.name: p.stat().st_mtime_ns for p in (run_dir / "thumbs").iterdir()}
    assert len(thumbs) == 5
    build_report(Storage(run_dir))
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "thumbs").iterdir()} == thumbs
    manifest = [json.loads(x) for x in (run_dir / "manifest.jsonl").read_text().splitlines()]
    png = sprite((255, 0, 255))
    (run_dir / "images" / "s1.png").write_bytes(png)
    image = {**manifest[1]["image"], "file_size": len(png)}
    redone = {**manifest[1], "image": image, "sha256": hashlib.sha256(png).hexdigest()}  # a later run redid s1
    record_run(run_dir, [redone], keys=[r["id"] for r in manifest])
    build_report(Storage(run_dir))
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "thumbs").iterdir()}
    changed = set(after.items()) ^ set(thumbs.items())
    assert {name.split(".")[0] for name, _ in changed} == {"s1"} and len(after) == 5


@pytest.fixture
def browser():
    if os.environ.get("LAYERDIFFUSE_BROWSER_TESTS") == "0":
        pytest.skip("browser tests turned off (make test BROWSER=0)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium not installed (make test installs Debian's chromium + chromium-driver when root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1200,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def visible_cards(driver) -> int:
    return driver.execute_script("return document.querySelectorAll('.card:not(.hidden)').length")


def test_report_in_a_real_browser(run_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    build_report(Storage(run_dir))
    browser.get((run_dir / "report.html").as_uri())
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    )
    assert browser.title == "LayerDiffuse run report"  # the prompt's script did not run
    assert visible_cards(browser) == 8
    screenshot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    ratio = browser.execute_script("return window.devicePixelRatio")
    first = browser.find_element(By.CSS_SELECTOR, ".card img").rect
    y = int((first["y"] + first["height"] / 2) * ratio)
    opaque = screenshot[y, int((first["x"] + first["width"] * 0.25) * ratio)]
    clear = screenshot[y, int((first["x"] + first["width"] * 0.75) * ratio)]
    assert np.abs(opaque.astype(int) - COLOURS[0]).max() <= 3  # the image's own pixels
    card = browser.find_element(By.CSS_SELECTOR, ".card .thumb").rect
    corner = screenshot[int((card["y"] + 2) * ratio), int((card["x"] + 2) * ratio)]
    board = {tuple(c) for c in CHECKER_COLOURS}
    assert tuple(clear) in board and tuple(corner) in board  # checkerboard behind transparency
    for status, expected in (("failed", 2), ("invalid", 1), ("flagged", 1), ("ok", 4), ("all", 8)):
        browser.find_element(By.CSS_SELECTOR, f"nav button[data-status='{status}']").click()
        assert visible_cards(browser) == expected, status
    search = browser.find_element(By.ID, "search")
    search.send_keys("sprite s2")
    WebDriverWait(browser, 5).until(lambda d: visible_cards(d) == 1)
    text = browser.find_element(By.CSS_SELECTOR, ".card:not(.hidden) .prompt").text
    assert text == "sprite s2"
    search.clear()
    search.send_keys("pwned")
    shown = "return [...document.querySelectorAll('.card:not(.hidden) .id')].map(e => e.firstChild.textContent)"
    WebDriverWait(browser, 5).until(lambda d: d.execute_script(shown) == ["xss "])
    assert "<b>bold</b>" in browser.find_element(By.CSS_SELECTOR, ".card:not(.hidden) .prompt").text
    link = browser.find_element(By.CSS_SELECTOR, ".card a").get_attribute("href")
    assert link == (run_dir / "images" / "s0.png").as_uri()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_generate_with_report_flag(tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na\nb\n")
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(tiny_config_file)]
    result = CliRunner().invoke(cli, [*args, "--report"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "row-000002" in page and "thumbs/00000/row-000001." in page
    assert Image.open(tmp_path / "out" / "contact_sheet.png").size == (2 * 256, 256 + 22)


def test_a_long_run_is_paginated_and_every_page_finds_its_thumbnails(run_dir):
    import re

    page = build_report(Storage(run_dir), page_size=3).page
    pages = [Path(page), *sorted((run_dir / "report").glob("page-*.html"))]
    assert [p.name for p in pages] == ["report.html", "page-00002.html", "page-00003.html"]
    seen = []
    for number, path in enumerate(pages, 1):
        text = path.read_text()
        cards = json.loads(re.search(r"const CARDS = (\[.*?\]);\n", text, re.S).group(1).replace("<\\/", "</"))
        seen += [c["id"] for c in cards]
        assert len(cards) == (3 if number < 3 else 2) and f"page {number} of 3" in text
        for card in cards:
            if "thumb" in card:
                assert (path.parent / card["thumb"]).is_file() and (path.parent / card["url"]).is_file()
        assert ("<dt>rows</dt><dd>8</dd>" in text) == (number == 1)  # the run summary heads the first page
    assert seen == ["s0", "s1", "s2", "s3", "nsfw", "broken", "bad", "xss"]
