"""The README's "Sprites for a game" example on the tiny model: variations, templates, sprites and sheets, end to
end (seeds, prompts, pixels, JSON), resumed, sharded, and re-derived without the model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.input.templates import expand_random
from pipeline.sprites.derive import SpriteSettings, alpha_bbox, derive
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("\n## Sprites for a game\n") :]
SECTION = SECTION[: SECTION.index("\n## ", 5)]
SETTINGS = SpriteSettings(trim=True, pad=4, square=True, sizes=(256, 64), bleed=True)  # the README's flags


def block(language: str) -> str:
    return re.search(rf"^```{language}\n(.*?)^```", SECTION, re.S | re.M).group(1)


def commands() -> list[list[str]]:
    """The README's first `layerdiffuse` commands (generate, atlas), as argument lists."""
    lines = [line for line in block("bash").splitlines() if line.startswith("layerdiffuse ")]
    return [shlex.split(line)[1:] for line in lines]


def run(*args, config=None):
    extra = ["--config", str(config)] if config else []
    return CliRunner().invoke(cli, [*map(str, args), *extra], catch_exceptions=False)


def in_subprocess(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, dict]:
    """The command line in a fresh interpreter; also which heavy libraries it imported."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps({m: m in sys.modules for m in ('torch', 'diffusers')}),"
        " file=sys.__stderr__))\n"
        "from pipeline.cli import main\n"
        "sys.argv = ['layerdiffuse', *json.loads(sys.argv[1])]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    return done, json.loads(done.stderr.strip().splitlines()[-1])


def manifest(out) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def files(out, folder: str) -> dict[str, tuple[int, int, bytes]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
            for p in (out / folder).rglob("*.png")}  # fmt: skip


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny_config_file):
    """The README's table, wildcard file and commands (with the tiny model, one image per batch)."""
    folder = tmp_path_factory.mktemp("example")
    (folder / "items.csv").write_text(block("csv"))
    (folder / "wildcards").mkdir()
    (folder / "wildcards" / "metals.txt").write_text(block("text"))
    cwd = os.getcwd()
    os.chdir(folder)  # the README's relative paths
    try:
        generate, atlas = commands()[:2]
        result = run(*generate, "--batch-size", "1", config=tiny_config_file)
        assert result.exit_code == 0, result.output
        packed = run(*atlas)
        assert packed.exit_code == 0, packed.output
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def own(example, tmp_path):
    shutil.copytree(example, tmp_path / "example")
    return tmp_path / "example"


def test_each_image_has_its_key_seed_prompt_file_and_record(example):
    records = manifest(example / "out")
    assert list(records) == ["potion", "potion.1", "potion.2", "sword", "shield", "shield.1"]
    template = "a {red|green|blue} potion bottle, game item, flat shading"
    for i, key in enumerate(["potion", "potion.1", "potion.2"]):
        r = records[key]
        assert (r["seed"], r["image_index"], r["source_id"], r["row"], r["template"]) == (10 + i, i, "potion", 1,
                                                                                          template)  # fmt: skip
        assert r["prompt"] == expand_random(template, 10 + i)
    colours = [records[k]["prompt"].split()[1] for k in ("potion", "potion.1", "potion.2")]
    assert colours == ["green", "blue", "red"]  # as the README says
    assert records["sword"]["prompt"] == "a sword made of iron, game item" and records["sword"]["seed"] == 2000
    assert records["shield.1"]["seed"] == records["shield"]["seed"] + 1 and records["shield"]["template"] is None
    for key, r in records.items():
        assert r["image"]["url"] == f"images/00000/{key}.png"
        data = (example / "out" / r["image"]["url"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        with Image.open(example / "out" / r["image"]["url"]) as image:
            assert image.text["prompt"] == r["prompt"] and image.text["seed"] == str(r["seed"])
            if r["template"]:
                assert image.text["template"] == r["template"]
                assert f', Template: "{r["template"]}"' in image.text["parameters"]


def test_sprites_are_derived_from_each_canvas_with_the_asked_settings(example):
    out = example / "out"
    for key, record in manifest(out).items():
        raw = pixels(out / record["image"]["url"])
        expected = {s.label: s for s in derive(raw, SETTINGS)}
        assert [s["label"] for s in record["sprites"]] == ["256", "64"]
        for entry in record["sprites"]:
            path = out / entry["url"]
            assert entry["url"] == f"sprites/{entry['label']}/00000/{key}.png"
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["file_size"] == path.stat().st_size
            assert entry["settings"] == SETTINGS.to_dict()
            sprite = expected[entry["label"]]
            assert np.array_equal(pixels(path), sprite.rgba)
            assert (entry["width"], entry["height"]) == sprite.size == (int(entry["label"]),) * 2
            assert tuple(entry["trim_box"].values()) == alpha_bbox(raw) == sprite.trim_box
            x, y, w, h = entry["content_box"].values()
            assert (x, y) >= (4, 4) and max(w, h) == int(entry["label"]) - 8  # padding 4, longest side fills


def test_atlas_frames_are_the_sprites_pixel_for_pixel(example):
    out = example / "out"
    records = manifest(out)
    for label in ("64", "256"):
        layout = json.loads((out / "atlas" / label / "sheet-0.json").read_text())
        sheet = pixels(out / "atlas" / label / "sheet-0.png")
        assert sorted(layout["frames"]) == sorted(records)
        assert layout["meta"]["image"] == "sheet-0.png"
        assert layout["meta"]["size"] == {"w": sheet.shape[1], "h": sheet.shape[0]}
        boxes = []
        for key, frame in layout["frames"].items():
            f = frame["frame"]
            sprite = pixels(out / next(s["url"] for s in records[key]["sprites"] if s["label"] == label))
            assert np.array_equal(sheet[f["y"] : f["y"] + f["h"], f["x"] : f["x"] + f["w"]], sprite)
            assert frame["rotated"] is False and frame["trimmed"] is False
            boxes.append((f["x"], f["y"], f["x"] + f["w"], f["y"] + f["h"]))
        for a, b in ((a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1], (a, b)
    assert json.loads((out / "atlas" / "64" / "sheet-0.json").read_text())["meta"]["size"] == {"w": 196, "h": 130}


def test_atlas_trims_frames_and_is_deterministic(own):
    out = own / "out"
    first = run("atlas", out, "--label", "64", "--trim", "--name", "items", "--padding", "0")
    assert first.exit_code == 0, first.output
    before = (out / "atlas" / "64" / "items-0.png").read_bytes()
    layout = json.loads((out / "atlas" / "64" / "items-0.json").read_text())
    sheet = pixels(out / "atlas" / "64" / "items-0.png")
    for key, frame in layout["frames"].items():
        sprite = pixels(out / "sprites" / "64" / "00000" / f"{key}.png")
        x, y, w, h = alpha_bbox(sprite)
        assert frame["spriteSourceSize"] == {"x": x, "y": y, "w": w, "h": h} and frame["trimmed"] is True
        f = frame["frame"]
        assert np.array_equal(sheet[f["y"] : f["y"] + h, f["x"] : f["x"] + w], sprite[y : y + h, x : x + w])
    assert run("atlas", out, "--label", "64", "--trim", "--name", "items", "--padding", "0").exit_code == 0
    assert (out / "atlas" / "64" / "items-0.png").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--label", "12"], "no sprites labelled '12'"), (["--max-size", "100", "--label", "256"], "larger than")],
)
def test_atlas_errors_name_what_is_wrong(example, args, fragment):
    result = run("atlas", example / "out", *args)
    assert result.exit_code == 2 and fragment in result.output


def test_an_image_redone_alone_as_a_row_is_the_same_image(example, tmp_path, tiny_config_file):
    record = manifest(example / "out")["potion.2"]
    table = tmp_path / "alone.csv"
    table.write_text('id,prompt,seed\nalone,"a {red|green|blue} potion bottle, game item, flat shading",12\n')
    result = run("generate", table, "--out", tmp_path / "out", "--batch-size", "1", config=tiny_config_file)
    assert result.exit_code == 0, result.output
    alone = manifest(tmp_path / "out")["alone"]
    assert (alone["prompt"], alone["seed"]) == (record["prompt"], record["seed"])
    assert np.array_equal(
        pixels(tmp_path / "out" / alone["image"]["url"]), pixels(example / "out" / record["image"]["url"])
    )


def test_resume_holds_per_image(own, tiny_config_file, monkeypatch):
    monkeypatch.chdir(own)  # the README's relative paths
    out = own / "out"
    before = files(out, "images")
    (out / "images" / "00000" / "potion.1.png").unlink()
    text = (own / "items.csv").read_text().replace('iron rim, game item",2,', 'iron rim, game item",3,')
    (own / "items.csv").write_text(text)  # the shield now asks for a third image
    generate = commands()[0]
    result = run(*generate, "--batch-size", "1", "--log-format", "json", config=tiny_config_file)
    summary = next(json.loads(x) for x in result.stderr.splitlines() if '"summary"' in x)
    assert result.exit_code == 0 and (summary["ok"], summary["skipped"]) == (2, 5)
    after = files(out, "images")
    assert after["images/00000/potion.1.png"][2] == before["images/00000/potion.1.png"][2]
    assert {k: v for k, v in after.items() if k not in ("images/00000/potion.1.png", "images/00000/shield.2.png")} \
        == {k: v for k, v in before.items() if k != "images/00000/potion.1.png"}  # fmt: skip
    records = manifest(out)
    assert list(records)[-1] == "shield.2" and records["shield.2"]["seed"] == records["shield"]["seed"] + 2
    assert [s["label"] for s in records["shield.2"]["sprites"]] == ["256", "64"]


def test_shards_make_the_same_images_and_sprites(example, tmp_path, tiny_config_file):
    generate = commands()[0]
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        args = [a if a != "out/" else str(out) for a in generate]
        args = [str(example / a) if a in ("items.csv", "wildcards/") else a for a in args]
        result = run(*args, "--batch-size", "1", "--shard", shard, config=tiny_config_file)
        assert result.exit_code == 0, result.output
    single, sharded = manifest(example / "out"), manifest(out)
    assert list(sharded) == list(single)
    for key, record in single.items():
        assert sharded[key]["sha256"] == record["sha256"] and sharded[key]["rank"] in (0, 1)
        assert [s["sha256"] for s in sharded[key]["sprites"]] == [s["sha256"] for s in record["sprites"]]


def test_changed_sprite_settings_alone_rederive_without_the_model(own, tiny_config_file):
    out = own / "out"
    raw, old = files(out, "images"), manifest(out)
    args = [a for a in commands()[0] if a not in ("--square", "--bleed")]
    args[args.index("256,64")] = "32"
    done, imported = in_subprocess([*args, "--config", str(tiny_config_file), "--log-format", "json"], own)
    assert done.returncode == 0, done.stderr
    assert imported == {"torch": False, "diffusers": False}
    events = [json.loads(x) for x in done.stderr.splitlines() if x.startswith('{"ts"')]
    assert "model_loaded" not in {e["event"] for e in events}
    assert next(e for e in events if e["event"] == "sprites_derived")["images"] == 6
    assert files(out, "images") == raw  # the raw canvases are not touched
    assert sorted(p.name for p in (out / "sprites").iterdir()) == ["32"]  # the old sizes' files are gone
    new = manifest(out)
    wanted = SpriteSettings(trim=True, pad=4, sizes=(32,))
    for key, record in new.items():
        (entry,) = record["sprites"]
        assert entry["settings"] == wanted.to_dict()
        (sprite,) = derive(pixels(out / record["image"]["url"]), wanted)
        assert np.array_equal(pixels(out / entry["url"]), sprite.rgba)
        unchanged = {k: v for k, v in record.items() if k != "sprites"}
        assert unchanged == {k: v for k, v in old[key].items() if k != "sprites"}  # provenance kept
    assert json.loads((out / "run.json").read_text())["config"]["sprites"] == wanted.to_dict()


def test_sprites_command_rederives_only_what_differs_without_the_model(own, tiny_config_file):
    out = own / "out"
    inline = {k: [s["sha256"] for s in r["sprites"]] for k, r in manifest(out).items()}
    done, imported = in_subprocess(["sprites", "out", "--trim", "--alpha-threshold", "200", "--pot", "--sizes", "8"],
                                   own)  # fmt: skip
    assert done.returncode == 0 and "derived the sprites of 6 images (0 already as asked)" in done.stdout
    assert imported == {"torch": False, "diffusers": False}
    for record in manifest(out).values():
        (entry,) = record["sprites"]
        raw = pixels(out / record["image"]["url"])
        (sprite,) = derive(raw, SpriteSettings(trim=True, alpha_threshold=200, pot=True, sizes=(8,)))
        assert np.array_equal(pixels(out / entry["url"]), sprite.rgba)
        assert tuple(entry["trim_box"].values()) == alpha_bbox(raw, 200)
    (out / "sprites" / "8" / "00000" / "sword.png").unlink()
    again = run("sprites", out, "--trim", "--alpha-threshold", "200", "--pot", "--sizes", "8")
    assert "derived the sprites of 1 images (5 already as asked)" in again.output
    removed = run("sprites", out, "--remove")
    assert removed.exit_code == 0 and not any(p.is_file() for p in (out / "sprites").rglob("*"))
    assert all(r["sprites"] is None for r in manifest(out).values())
    back = run("sprites", out, "--trim", "--pad", "4", "--square", "--sizes", "256,64", "--bleed")
    assert back.exit_code == 0, back.output
    assert {k: [s["sha256"] for s in r["sprites"]] for k, r in manifest(out).items()} == inline  # same bytes


def test_a_later_run_without_sprite_flags_keeps_the_folder_s_settings(own, tiny_config_file):
    (own / "more.csv").write_text((own / "items.csv").read_text() + "lamp,a brass lamp,,5\n")
    result = run("generate", own / "more.csv", "--out", own / "out", "--wildcards", own / "wildcards",
                 "--batch-size", "1", config=tiny_config_file)  # fmt: skip
    assert result.exit_code == 0, result.output
    lamp = manifest(own / "out")["lamp"]
    assert [s["label"] for s in lamp["sprites"]] == ["256", "64"] and lamp["sprites"][0][
        "settings"
    ] == SETTINGS.to_dict()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bleed", "--premultiplied"], "bleed and premultiplied exclude each other"),
        (["--sizes", "64,abc"], "comma-separated whole numbers"),
        (["--sizes", "8", "--pad", "4"], "leaves no room"),
        (["--alpha-threshold", "255"], "0<=x<=254"),
    ],
)
def test_bad_sprite_flags_are_usage_errors(own, args, fragment):
    result = run("sprites", own / "out", *args)
    assert result.exit_code == 2 and fragment in result.output
    generate = run("generate", own / "items.csv", "--out", own / "other", *args)
    assert generate.exit_code == 2 and fragment in generate.output


def test_a_folder_of_the_previous_manifest_version_resumes(own, tiny_config_file, monkeypatch):
    """Version 2 had no image-of-row or sprite fields: its checkpoint is set aside, its logs are read again."""
    import pyarrow.parquet as pq

    from pipeline.folder.schema import IMAGE_OF_ROW, VERSION

    out, added = own / "out", [name for name, _ in IMAGE_OF_ROW] + ["sprites"]
    checkpoint = pq.read_table(out / "parts" / "checkpoint.parquet")
    pq.write_table(checkpoint.drop_columns(added), out / "parts" / "checkpoint.parquet")
    for log in (out / "parts").glob("*.jsonl"):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in added}) + "\n" for r in lines))
    monkeypatch.chdir(own)
    result = run(*commands()[0], "--batch-size", "1", "--log-format", "json", config=tiny_config_file)
    summary = next(json.loads(x) for x in result.stderr.splitlines() if '"summary"' in x)
    assert result.exit_code == 0 and (summary["ok"], summary["skipped"]) == (0, 6)
    assert pq.read_schema(out / "manifest.parquet").metadata[b"layerdiffuse.manifest_version"] == VERSION.encode()
    records = manifest(out)
    assert list(records) == ["potion", "potion.1", "potion.2", "sword", "shield", "shield.1"]
    assert all(r["source_id"] is None and r["sprites"][0]["label"] == "256" for r in records.values())
