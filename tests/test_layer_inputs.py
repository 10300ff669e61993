"""img2img, hires and layer-mode columns without a model: parsing, defaults, batching and request identity."""

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.input.config import ConfigError, Defaults, load_config
from pipeline.input.layer_inputs import CONDITIONS, hires_size
from pipeline.input.rows import Row
from pipeline.input.table import load_table
from pipeline.plan.identity import Identity
from pipeline.plan.inputs import InputFiles, needs, problem
from tests.helpers import plan_batches, rows_of

DEFAULTS = Defaults(width=64, height=64, num_inference_steps=2)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_png(path, size=64, pixel=(200, 50, 50, 255)):
    image = np.zeros((size, size, 4), np.uint8)
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = pixel
    Image.fromarray(image).save(path)
    return path


def test_plain_rows_hash_exactly_as_before_these_inputs_existed():
    """Values computed with the code of `restructure` (before this feature): plain rows, with and without a
    LoRA set, keep their request hashes, so an existing output folder redoes nothing."""
    identity = Identity({"base": "b", "tta": True}, "chk")
    plain = Row(number=1, key="k", prompt="a cat", negative_prompt="text", seed=7, guidance_scale=8.0,
                num_inference_steps=2, width=64, height=64, enable_safety_checker=False)  # fmt: skip
    other = Row(number=2, key="k2", prompt="a dog", negative_prompt="", seed=2**64 - 1, guidance_scale=7.5,
                num_inference_steps=20, width=1024, height=512, enable_safety_checker=True)  # fmt: skip
    assert identity.request_hash(plain) == "5dfc7bdd0242c1698fcdcc8058067f583e7be508deb0ad10bbb0226cc1e10ae1"
    assert identity.request_hash(other) == "b7f56f99ac65cddf778e8e1043f724decbb132eebe230270673d27ce7b382400"
    assert identity.request_hash(plain, "lorakey") == "d57c72ecc7ef70cefdf1d6dfb549bcc0741aa899f875ddc2d9517849411d20ae"
    # Unused settings and images add nothing: a `foreground` in mode fg is dropped when the table is read.
    assert identity.request_hash(replace(plain, mode="fg")) == identity.request_hash(plain)


def test_a_plain_table_carries_no_inputs_and_batches_as_before(tmp_path):
    table = load_table(write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"p{i}"} for i in range(3)]), DEFAULTS)
    assert table.valid.inputs == {}
    assert table.valid.signatures() == [(64, 64, 2, 8.0, (), None)] * 3
    assert [row.inputs() for row in rows_of(table)] == [{}] * 3


def test_rows_use_only_what_their_mode_asks_for(tmp_path):
    rows = [
        {"id": "t2i", "prompt": "p", "strength": 0.3, "foreground": "fg.png"},  # neither is used
        {"id": "i2i", "prompt": "p", "image": "in/sprite.png", "strength": "0.3"},
        {"id": "hires", "prompt": "p", "hires_scale": 1.5},
        {"id": "fg2blend", "prompt": "p", "mode": "FG2Blend", "foreground": "fg.png", "background": "bg.png"},
        {"id": "layers", "prompt": "p", "mode": "layers"},
    ]
    table = load_table(write_jsonl(tmp_path / "tables" / "t.jsonl", rows), DEFAULTS)
    assert not table.invalid
    t2i, i2i, hires, fg2blend, layers = rows_of(table)
    assert t2i.inputs() == {} and t2i.foreground is None and t2i.strength is None
    assert i2i.inputs() == {"image": str(tmp_path / "tables" / "in" / "sprite.png"), "strength": 0.3, "mode": "fg"}
    assert hires.inputs() == {"hires_scale": 1.5, "hires_strength": 0.4, "mode": "fg"}
    assert fg2blend.mode == "fg2blend" and fg2blend.images() == {"foreground": str(tmp_path / "tables" / "fg.png")}
    assert layers.images() == {} and layers.kind == ("layers", False, None, False)
    assert needs(rows_of(table)) == (True, ("blend2bg", "fg2blend"))


def test_rows_of_different_kinds_never_share_a_batch(tmp_path):
    rows = [{"prompt": "p", "image": "a.png", "strength": 0.2}, {"prompt": "p"}, {"prompt": "p", "image": "b.png"},
            *({"prompt": "p", "hires_scale": scale} for scale in (2, 1.5, 2))]  # fmt: skip
    table = load_table(write_jsonl(tmp_path / "t.jsonl", rows), DEFAULTS)
    batches = [[row.number for row in batch.rows] for batch in plan_batches(rows_of(table), 4)]
    assert batches == [[1, 3], [2], [4, 6], [5]]  # img2img rows may differ in strength; hires scales may not


def test_defaults_fill_rows_without_a_value(tmp_path):
    defaults = replace(DEFAULTS, mode="bg2blend", background="/scenes/forest.png")
    rows = [{"prompt": "p"}, {"prompt": "p", "mode": "fg", "hires_scale": 2, "hires_strength": 0.25}]
    first, second = rows_of(load_table(write_jsonl(tmp_path / "t.jsonl", rows), defaults))
    assert first.mode == "bg2blend" and first.background == "/scenes/forest.png"
    assert second.images() == {} and (second.hires_scale, second.hires_strength) == (2.0, 0.25)


@pytest.mark.parametrize(
    "row, column, hint",
    [
        ({"image": "a.png", "strength": 1.5}, "strength", "between 0 and 1"),
        ({"hires_scale": 0.5}, "hires_scale", "between 1 and 4"),
        ({"hires_scale": 2.5, "width": 2048}, "hires_scale", "larger than 4096"),
        ({"mode": "bg2fg"}, "mode", "fg, fg2blend, bg2blend, blend2bg, blend2fg, layers"),
        ({"mode": "blend2bg", "foreground": "f.png"}, "mode", "needs the 'blend' image"),
        ({"mode": "fg2blend", "foreground": "f.png", "image": "a.png"}, "image", "works in mode fg only"),
        ({"mode": "layers", "hires_scale": 2}, "hires_scale", "works in mode fg only"),
        ({"image": 12}, "image", "must be text"),
    ],
)
def test_bad_cells_make_invalid_rows_that_say_how_to_fix_them(tmp_path, row, column, hint):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "fine"}, {"prompt": "p", **row}])
    table = load_table(path, DEFAULTS)
    assert len(table.valid) == 1 and len(table.invalid) == 1
    error = table.invalid[0].error
    assert error.startswith(f"{path}: row 2, column {column!r}") and hint in error, error


def test_config_defaults_and_weights_are_checked_like_cells(tmp_path):
    (tmp_path / "c.yaml").write_text("defaults:\n  mode: layers\n  image: ./in/a.png\n  hires_scale: 1.5\n"
                                     "model:\n  conditional_weights: {fg2blend: mine.safetensors}\n")  # fmt: skip
    config = load_config(tmp_path / "c.yaml")
    assert config.defaults.mode == "layers" and config.defaults.image == str(tmp_path / "in" / "a.png")
    assert config.model.conditional_weights == {"fg2blend": "mine.safetensors"}
    for bad, message in [("defaults:\n  strength: 2\n", "default strength = 2"),
                         ("defaults:\n  mode: x\n", "default mode = 'x'"),
                         ("model:\n  conditional_weights: {bg2fg: x}\n", "unknown mode(s) ['bg2fg']")]:  # fmt: skip
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(tmp_path / "bad.yaml")


def test_the_table_side_agrees_with_the_model_side():
    from pipeline.model.conditional import CONDITIONS as MODEL_CONDITIONS
    from pipeline.model.img2img import hires_size as model_hires_size

    assert CONDITIONS == MODEL_CONDITIONS
    for size in [(1024, 1024, 1.5), (896, 1152, 1.5), (1000, 600, 1.3), (64, 64, 1.01)]:
        assert hires_size(*size) == model_hires_size(*size)


def test_input_content_not_location_is_the_identity(tmp_path):
    identity = Identity({"base": "b"}, None, {"encoder": "e" * 64})
    write_png(tmp_path / "a.png")
    rows = [
        {"id": "a", "prompt": "p", "seed": 1, "image": "a.png"},
        {"id": "b", "prompt": "p", "seed": 1, "image": "b.png"},
    ]
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")

    def hashes(folder):
        table = load_table(write_jsonl(folder / "t.jsonl", rows), DEFAULTS)
        files = InputFiles()
        return [identity.request_hash(row, "", files.of([row])) for row in rows_of(table)]

    before = hashes(tmp_path)
    assert before[0] == before[1]  # same content, other file
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("moved"))
    assert hashes(moved) == before
    write_png(tmp_path / "b.png", pixel=(200, 50, 51, 255))  # one channel of some pixels
    after = hashes(tmp_path)
    assert after[0] == before[0] and after[1] != before[1]
    plain = identity.request_hash(
        rows_of(load_table(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p"}]), DEFAULTS))[0]
    )
    assert plain not in after
    weights = Identity({"base": "b"}, None, {"encoder": "f" * 64})  # another encoder redoes img2img rows only
    table = load_table(tmp_path / "t.jsonl", DEFAULTS)
    assert weights.request_hash(rows_of(table)[0], "", InputFiles().of(rows_of(table))) != after[0]


def test_input_problems_are_the_row_s_and_say_what_to_do(tmp_path):
    write_png(tmp_path / "big.png", size=128)
    (tmp_path / "text.png").write_text("not an image")
    rows = [{"prompt": "p", "image": name} for name in ("big.png", "text.png", "absent.png")]
    table = load_table(write_jsonl(tmp_path / "t.jsonl", rows), DEFAULTS)
    files = InputFiles()
    big, text, absent = (problem(row, files.of([row])) for row in rows_of(table))
    assert "is 128x128, the row makes 64x64 images; resize the image or set the row's width and height" in big
    assert "text.png: not an image" in text
    assert f"{tmp_path / 'absent.png'}: no such file" in absent
