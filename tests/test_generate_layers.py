"""img2img, hires and the layer modes through the real run path on the tiny model (64x64, 2 steps, no TTA)."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.common.exits import ExitCode
from pipeline.run.executor import generate
from tests.helpers import rows_of

ROWS = [
    {"id": "plain", "prompt": "a red ball", "seed": 5},
    {"id": "zero_a", "prompt": "a red ball", "seed": 1, "image": "disc.png", "strength": 0},
    {"id": "zero_b", "prompt": "a blue cube", "seed": 2, "image": "inputs/../disc.png", "strength": 0},
    {"id": "half", "prompt": "a red ball", "seed": 1, "image": "half.png", "strength": 0.5},
    {"id": "hires", "prompt": "a red ball", "seed": 5, "hires_scale": 2, "hires_strength": 0},
    {"id": "fg2blend", "prompt": "a ball on a table", "mode": "fg2blend", "foreground": "disc.png"},
    {"id": "bg2blend", "prompt": "a ball on a table", "mode": "bg2blend", "background": "room.png"},
    {"id": "blend2bg", "prompt": "a table", "mode": "blend2bg", "foreground": "disc.png", "blend": "room.png"},
    {"id": "blend2fg", "prompt": "a ball", "mode": "blend2fg", "background": "room.png", "blend": "room.png"},
    {"id": "layers", "prompt": "a ball", "mode": "layers"},
    {"id": "layers_bg", "prompt": "a ball", "mode": "layers", "background": "room.png"},
    {"id": "missing", "prompt": "a ball", "image": "absent.png"},
    {"id": "too_big", "prompt": "a ball", "image": "big.png"},
]
# (PIL mode, width, height) of each row's PNG (docs/layerdiffuse.md §9, README "Transparent img2img, hires and layers")
WRITTEN = {
    **dict.fromkeys(["plain", "zero_a", "zero_b", "half", "blend2fg"], ("RGBA", 64, 64)),
    "hires": ("RGBA", 128, 128),
    **dict.fromkeys(["fg2blend", "bg2blend", "blend2bg"], ("RGB", 64, 64)),
    **dict.fromkeys(["layers", "layers_bg"], ("RGBA", 192, 64)),
}
FAILED = {"missing": "absent.png: no such file", "too_big": "is 128x128, the row makes 64x64 images"}


def drawn(size: int = 64) -> np.ndarray:
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size
    image = np.zeros((size, size, 4), np.uint8)
    image[(yy - 0.5) ** 2 + (xx - 0.45) ** 2 < 0.28**2] = (230, 60, 40, 255)
    return image


def write_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in [("disc.png", drawn()), ("half.png", drawn()), ("big.png", drawn(128))]:
        Image.fromarray(image).save(folder / name)
    room = np.zeros((64, 64, 3), np.uint8)
    room[32:] = (90, 60, 30)
    room[:32] = (150, 190, 230)
    Image.fromarray(room).save(folder / "room.png")
    table = folder / "t.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return table


def records(out):
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def png(out, record):
    return Image.open(out / record["image"]["url"])


def pixels(out, record):
    return np.asarray(png(out, record))


@pytest.fixture(scope="module")
def config(tiny_config):
    return replace(tiny_config, run=replace(tiny_config.run, tta=False))


@pytest.fixture(scope="module")
def done(config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layers")
    table = write_inputs(folder / "work")
    summary = generate(config, table, folder / "work" / "out")
    return folder / "work", summary


@pytest.fixture(scope="module")
def model(config):
    from pipeline.model import load_model

    return load_model(config.model, encoder=True)


def test_each_kind_writes_its_documented_image(done):
    work, summary = done
    got = records(work / "out")
    assert {k: r["status"] for k, r in got.items()} == {k: "failed" if k in FAILED else "ok" for k in got}
    for key, (mode, width, height) in WRITTEN.items():
        image = png(work / "out", got[key])
        assert (image.mode, image.width, image.height) == (mode, width, height), key
        assert (got[key]["image"]["width"], got[key]["image"]["height"]) == (width, height)
    assert summary.ok == len(WRITTEN) and summary.failed == 2 and summary.exit_code == ExitCode.ROWS


def test_input_problems_fail_their_rows_only_and_say_why(done):
    work, _ = done
    got = records(work / "out")
    for key, message in FAILED.items():
        assert got[key]["status"] == "failed" and message in got[key]["error"], got[key]["error"]
        assert got[key]["image"] is None


def test_strength_zero_gives_the_input_through_the_transparent_path(done, model):
    from pipeline.model import img2img_rgba

    work, _ = done
    got = records(work / "out")
    zero_a, zero_b, half = (pixels(work / "out", got[k]) for k in ("zero_a", "zero_b", "half"))
    assert zero_a.tobytes() == zero_b.tobytes()  # nothing denoised: prompt and seed play no part
    row = next(r for r in rows_of_table(work) if r.key == "zero_a")
    expected = img2img_rgba(model, [row], drawn()[None], [0.0], tta=False)[0]
    # The encoder and decoders' round trip; batched with zero_b in the run, alone here: low bits may move.
    assert np.abs(zero_a.astype(int) - expected).max() <= 2
    assert np.abs(half.astype(int) - zero_a).mean() > 0  # strength changes pixels


def test_hires_is_the_first_pass_upscaled_through_the_transparent_path(done, model):
    from pipeline.model import hires_rgba

    work, _ = done
    got = records(work / "out")
    plain, hires = pixels(work / "out", got["plain"]), pixels(work / "out", got["hires"])
    row = next(r for r in rows_of_table(work) if r.key == "hires")
    expected = hires_rgba(model, [row], plain[None], 2.0, [0.0], tta=False)[0]
    assert hires.shape == (128, 128, 4) and np.abs(hires.astype(int) - expected).max() <= 2


def rows_of_table(work):
    from pipeline.input.config import Defaults
    from pipeline.input.table import load_table

    return rows_of(load_table(work / "t.jsonl", Defaults(width=64, height=64, num_inference_steps=2)))


def test_records_and_png_metadata_name_the_inputs_and_parameters(done):
    import hashlib

    work, _ = done
    got = records(work / "out")
    disc = hashlib.sha256((work / "disc.png").read_bytes()).hexdigest()
    assert got["zero_b"]["inputs"] == [{"name": "image", "url": str(work / "disc.png"), "sha256": disc,
                                        "width": 64, "height": 64}]  # fmt: skip
    assert [i["name"] for i in got["blend2bg"]["inputs"]] == ["foreground", "blend"]
    assert (got["half"]["mode"], got["half"]["strength"], got["half"]["hires_scale"]) == ("fg", 0.5, None)
    assert (got["hires"]["hires_scale"], got["hires"]["hires_strength"], got["hires"]["strength"]) == (2.0, 0.0, None)
    assert got["plain"]["inputs"] is None and got["plain"]["strength"] is None and got["plain"]["mode"] == "fg"
    half = png(work / "out", got["half"]).text["parameters"]
    assert "Size: 64x64" in half and ", Denoising strength: 0.5," in half
    hires = png(work / "out", got["hires"]).text["parameters"]
    assert "Size: 64x64" in hires and ", Denoising strength: 0, Hires upscale: 2, Hires upscaler:" in hires
    assert ", Layer mode: blend2bg" in png(work / "out", got["blend2bg"]).text["parameters"]
    assert "Denoising" not in png(work / "out", got["plain"]).text["parameters"]
    assert "strength" not in png(work / "out", got["plain"]).text  # a plain row's PNG says what it always said


def test_resume_redoes_only_the_row_whose_input_changed(done, config, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(done[0], work)
    before = {k: r["sha256"] for k, r in records(work / "out").items()}
    again = generate(config, work / "t.jsonl", work / "out")
    assert again.ok == 0 and again.skipped == len(WRITTEN) and again.failed == 2  # failed rows are retried
    image = np.asarray(Image.open(work / "half.png")).copy()
    image[0, 0] = (1, 2, 3, 4)  # one pixel, of a row that others do not share
    Image.fromarray(image).save(work / "half.png")
    third = generate(config, work / "t.jsonl", work / "out")
    assert third.ok == 1 and third.skipped == len(WRITTEN) - 1
    after = records(work / "out")
    assert [k for k in WRITTEN if after[k]["sha256"] != before[k]] == ["half"]


def test_shard_jobs_write_the_same_bytes_as_one_process(done, config, tmp_path):
    work = tmp_path / "work"
    table = write_inputs(work)
    for index in range(2):
        generate(config, table, work / "out", shard=(index, 2))
    one, sharded = records(done[0] / "out"), records(work / "out")
    for key in WRITTEN:
        assert sharded[key]["request_hash"] == one[key]["request_hash"], key
        assert (work / "out" / sharded[key]["image"]["url"]).read_bytes() == pixels_bytes(done[0], one[key]), key


def pixels_bytes(work, record):
    return (work / "out" / record["image"]["url"]).read_bytes()


def test_a_folder_of_an_earlier_version_resumes_with_nothing_redone(config, tmp_path):
    """Plain rows of a folder written before these fields existed (part logs without them, no checkpoint)."""
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"sprite {i}"}) + "\n" for i in range(2)))
    generate(config, table, tmp_path / "out")
    for log in (tmp_path / "out" / "parts").glob("*.jsonl"):
        old = [{k: v for k, v in json.loads(line).items() if k not in ("mode", "strength", "hires_scale",
                "hires_strength", "inputs")} for line in log.read_text().splitlines()]  # fmt: skip
        log.write_text("".join(json.dumps(record) + "\n" for record in old))
    (tmp_path / "out" / "parts" / "checkpoint.parquet").unlink()
    again = generate(config, table, tmp_path / "out")
    assert again.ok == 0 and again.skipped == 2


def test_sprites_come_from_foregrounds_only_and_stay_current(config, tmp_path):
    from pipeline.input.sprite_settings import SpriteSettings

    work = tmp_path / "work"
    write_inputs(work)
    rows = [ROWS[0], next(r for r in ROWS if r["id"] == "fg2blend")]
    (work / "s.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    trimmed = replace(config, sprites=SpriteSettings(trim=True))
    generate(trimmed, work / "s.jsonl", work / "out")
    got = records(work / "out")
    assert got["plain"]["sprites"] and got["fg2blend"]["sprites"] is None
    again = generate(trimmed, work / "s.jsonl", work / "out")
    assert again.skipped == 2 and records(work / "out")["fg2blend"]["sprites"] is None  # nothing to restyle
