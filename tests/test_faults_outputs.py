"""Faults in what is derived from the images (report, sprites, atlas): damaged images, hostile prompts, kills
mid-write, sprites changed under an atlas. Each ends in a documented exit code, never in a traceback or in
an output that points at files that are gone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.common.faults import ENV, OUTPUT_MOMENTS
from pipeline.common.storage import Storage
from pipeline.folder.manifest import merge, write_keys, write_run_info
from pipeline.folder.parts import PartWriter
from pipeline.report.gallery import build_report, script_json
from tests.conftest import REPO
from tests.test_report import COLOURS, browser, record, record_run, sprite, visible_cards  # noqa: F401

HOSTILE = [
    "<!--<script>",
    "<!--<script></script>-->",
    "</script><script>window.pwned = 1</script>",
    "<script>window.pwned = 2</script>",
    "</SCRIPT/><img src=x onerror='window.pwned = 3'>",
    "<!-- -- > --!> ]]> <![CDATA[",
    "line\u2028separator\u2029paragraph",
    "\\u003c/script> and \\</script>, backslashes",
    "&lt;b&gt; &amp; &#60;script&#62; ${window.pwned = 4} `tick` 'single' \"double\"",
    "\U0001f5e1 sword, \u00e9p\u00e9e, \u5263",
    "/*CARDS*/[] <!--PAGER--> <!--SUMMARY--> /*BACKGROUND*/",  # the page template's own placeholders
]


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def folder_of_images(folder: Path, **extra) -> Path:
    """Four finished images and their records, as a run leaves them (no model needed); each PNG ends in 64
    zero bytes after its IEND (decoders ignore them), room for a forgery of the same size."""
    (folder / "images").mkdir(parents=True)
    records = []
    for i, colour in enumerate(COLOURS):
        png = sprite(colour) + bytes(64)
        (folder / "images" / f"s{i}.png").write_bytes(png)
        records.append(record(f"s{i}", png=png, **extra))
    record_run(folder, records)
    return folder


def cards(page: Path) -> list[dict]:
    return script_cards(page.read_text())


def script_cards(page: str) -> list[dict]:
    return json.loads(re.search(r"const CARDS = (\[.*?\]);\n", page, re.S).group(1))


def same_size_forgery(original: bytes, colour) -> bytes:
    """A valid PNG of another image with the original's byte count (zeros after IEND, which decoders ignore)."""
    forged = sprite(colour)
    assert len(forged) <= len(original)
    return forged + bytes(len(original) - len(forged))


DAMAGE = {
    "deleted": (lambda path: path.unlink(), "image missing"),
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[:100]), "image damaged"),
    "garbage": (lambda path: path.write_bytes(os.urandom(500)), "image damaged"),
    "garbage of the same size": (lambda path: path.write_bytes(os.urandom(path.stat().st_size)), "image damaged"),
    "another image of the same size": (
        lambda path: path.write_bytes(same_size_forgery(path.read_bytes(), (0, 0, 0))),
        "image damaged",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_image_after_its_thumbnail_was_made_becomes_a_card_that_says_so(tmp_path, damage):
    out = folder_of_images(tmp_path / "out")
    assert run("report", out).exit_code == 0
    harm, label = DAMAGE[damage]
    harm(out / "images" / "s0.png")

    result = run("report", out)

    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1 and "1 image(s) missing or damaged (s0)" in result.stderr
    assert "--verify" in result.stderr and "Traceback" not in result.output
    shown = {c["id"]: c for c in cards(out / "report.html")}
    assert "thumb" not in shown["s0"] and shown["s0"]["placeholder"] == label
    assert shown["s0"]["error"].startswith(f"{label}: images/s0.png")
    assert all((out / shown[k]["thumb"]).is_file() for k in ("s1", "s2", "s3"))
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * 256, 2 * (256 + 22))  # s1, s2, s3 only


def test_a_thumbnail_is_made_from_the_image_as_recorded_and_follows_its_restoration(tmp_path, tiny_config_file):
    """A tampered image (same size, so a plain rerun keeps it) makes no thumbnail; once `generate --verify`
    writes the image again, the report shows the thumbnail of the restored image, not of the tampered one."""
    (tmp_path / "t.csv").write_text("prompt\na\nb\n")
    generate = ["generate", tmp_path / "t.csv", "--out", tmp_path / "out", "--config", tiny_config_file]
    assert run(*generate).exit_code == 0
    out = tmp_path / "out"
    image = out / "images" / "00000" / "row-000001.png"
    original = image.read_bytes()
    image.write_bytes(same_size_forgery(original, (255, 0, 255)))

    tampered = run("report", out)
    assert tampered.exit_code == 3 and "row-000001" in tampered.stderr
    assert not list((out / "thumbs").rglob("row-000001.*"))

    assert run(*generate, "--verify").exit_code == 0
    assert image.read_bytes() == original
    restored = run("report", out)
    assert restored.exit_code == 0, restored.output
    card = next(c for c in cards(out / "report.html") if c["id"] == "row-000001")
    with Image.open(io.BytesIO(original)) as source:
        expected = source.convert("RGBA")
        expected.thumbnail((192, 192), Image.Resampling.LANCZOS)
    with Image.open(out / card["thumb"]) as thumb:
        assert np.array_equal(np.asarray(thumb.convert("RGBA")), np.asarray(expected))
    assert hashlib.sha256(original).hexdigest()[:16] in card["thumb"]


def test_script_data_has_no_markup_and_reads_back_unchanged():
    data = [{"prompt": text} for text in HOSTILE]
    encoded = script_json(data)
    assert not re.search("[<>&\u2028\u2029]", encoded)
    assert json.loads(encoded) == data


def test_hostile_prompts_show_as_text_in_a_real_browser(tmp_path, browser):  # noqa: F811
    """One page per text: texts can undo each other's effect on the HTML parser (`-->` ends what `<!--` began)."""
    png = sprite(COLOURS[0])
    prompts = "return [...document.querySelectorAll('.card .prompt')].map(e => e.textContent)"
    errors = "return [...document.querySelectorAll('.card .error')].map(e => e.textContent)"
    facts = "return Object.fromEntries([...document.querySelectorAll('#summary div')].map(d => [d.firstChild"
    facts += ".textContent, d.lastChild.textContent]))"
    for i, text in enumerate(HOSTILE):
        out = tmp_path / f"out{i}"
        (out / "images").mkdir(parents=True)
        (out / "images" / "ok.png").write_bytes(png)
        record_run(out, [record("ok", png=png, prompt=text), record("no", status="failed", prompt=text, error=text)])
        write_run_info(Storage(out), {"input": text, "started_at": text})  # shown in the summary
        assert run("report", out).exit_code == 0

        browser.get((out / "report.html").as_uri())
        assert browser.title == "LayerDiffuse run report", text
        assert visible_cards(browser) == 2, text
        assert browser.execute_script(prompts) == [text, text] and browser.execute_script(errors) == [text]
        summary = browser.execute_script(facts)
        assert (summary["input"], summary["started"]) == (text, text)
        assert browser.execute_script("return window.pwned") is None
        assert browser.execute_script("return document.scripts.length") == 1
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == [], text


def command_in_subprocess(args: list, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


KILLS = {  # moment -> the command killed there (at its second file: others of that kind are in place)
    "sprite_temp_written": ["sprites", "{out}", "--sizes", "64"],
    "sheet_temp_written": ["atlas", "{out}"],
    "thumbnail_temp_written": ["report", "{out}"],
}


@pytest.mark.parametrize("moment", OUTPUT_MOMENTS)
def test_a_command_killed_mid_write_leaves_temporaries_that_the_next_one_sweeps(tmp_path, moment):
    out = folder_of_images(tmp_path / "out")
    if moment == "sheet_temp_written":
        assert run("sprites", out, "--sizes", "64").exit_code == 0
    args = [a.format(out=out) for a in KILLS[moment]]

    killed = command_in_subprocess(args, f"{moment}:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(out.rglob(".*.tmp")), "the kill left no temporary file to sweep"

    again = command_in_subprocess(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(out.rglob(".*.tmp"))


def assert_atlases_name_only_current_sprites(out: Path) -> None:
    """Every frame of every sheet is an image whose latest record lists a sprite of that label, in place."""
    records = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    for layout in (out / "atlas").rglob("*.json"):
        label = layout.parent.name
        data = json.loads(layout.read_text())
        assert (layout.parent / data["meta"]["image"]).is_file()
        for key in data["frames"]:
            urls = [e["url"] for e in records[key]["sprites"] or () if e["label"] == label]
            assert urls and (out / urls[0]).is_file(), f"{layout} names {key}'s {label} sprite, which is gone"


def test_sprites_of_another_size_remove_the_sheets_of_the_old_one(tmp_path):
    out = folder_of_images(tmp_path / "out")
    assert run("sprites", out, "--sizes", "64").exit_code == 0
    assert run("atlas", out).exit_code == 0
    assert (out / "atlas" / "64" / "sheet-0.json").is_file()

    changed = run("sprites", out, "--sizes", "48")

    assert changed.exit_code == 0, changed.output
    assert f"removed {out}/atlas/64: their sprites changed; run `layerdiffuse atlas` again" in changed.output
    assert not (out / "atlas").exists() and not (out / "sprites" / "64").exists()
    assert run("atlas", out).exit_code == 0
    assert sorted(p.name for p in (out / "atlas").iterdir()) == ["48"]
    assert_atlases_name_only_current_sprites(out)


@pytest.mark.parametrize("how", [[], ["--overwrite"]], ids=["restyled", "regenerated"])
def test_generate_with_other_sprite_sizes_removes_the_sheets_of_the_old_ones(tmp_path, tiny_config_file, how):
    (tmp_path / "t.csv").write_text("prompt\na\nb\n")
    generate = ["generate", tmp_path / "t.csv", "--out", tmp_path / "out", "--config", tiny_config_file]
    out = tmp_path / "out"
    assert run(*generate, "--sizes", "64").exit_code == 0
    assert run("atlas", out).exit_code == 0
    assert (out / "atlas" / "64" / "sheet-0.png").is_file()

    result = run(*generate, "--sizes", "48", *how, "--log-format", "json")

    assert result.exit_code == 0, result.output
    events = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert any(e["event"] == "atlas_removed" and "atlas/64" in e["message"] for e in events)
    assert not (out / "atlas" / "64").exists() and not list((out / "sprites" / "64").rglob("*.png"))
    assert_atlases_name_only_current_sprites(out)


def test_an_object_store_report_names_a_missing_image_from_its_listing():
    storage = Storage(f"memory://reports/{uuid.uuid4().hex}")
    records = []
    for i, colour in enumerate(COLOURS):
        png = sprite(colour)
        storage.write(f"images/s{i}.png", png)
        records.append(record(f"s{i}", png=png))
    with PartWriter(storage, "20260101T000000000000Z-rank00000-of-00001") as part:
        for item in records:
            part.append(item)
    write_keys(storage, [r["id"] for r in records], [])
    assert merge(storage) is not None
    assert build_report(storage).unusable == 0
    storage.remove("images/s2.png")

    built = build_report(storage)

    assert (built.unusable, built.examples) == (1, ("s2",))
    shown = {c["id"]: c for c in script_cards(storage.read_bytes("report.html").decode())}
    assert shown["s2"]["placeholder"] == "image missing" and "thumb" not in shown["s2"]
    assert all(storage.exists(shown[k]["thumb"]) for k in ("s0", "s1", "s3"))
