"""Sprite sheets: frames cut out of the written PNGs equal the sprites, no overlaps, the JSON layout."""

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.sprites.packer import AtlasError, AtlasInput
from tests.helpers import pack_atlas

FRAME_KEYS = {"frame", "rotated", "trimmed", "spriteSourceSize", "sourceSize"}


def random_sprites(count: int, seed: int, low: int = 3, high: int = 90, margin: int = 0) -> list[AtlasInput]:
    """Sprites of random sizes and random pixels (some alpha 0), optionally with a transparent margin."""
    rng = np.random.default_rng(seed)
    sprites = []
    for i in range(count):
        h, w = rng.integers(low, high, 2)
        rgba = rng.integers(0, 256, (h + 2 * margin, w + 2 * margin, 4), dtype=np.uint8)
        rgba[..., 3][rng.random(rgba.shape[:2]) < 0.2] = 0
        rgba[..., 3][h // 2 + margin, w // 2 + margin] = 255  # at least one visible pixel
        if margin:
            rgba[:margin, :, 3] = rgba[-margin:, :, 3] = rgba[:, :margin, 3] = rgba[:, -margin:, 3] = 0
        sprites.append(AtlasInput(f"sprite-{i:03d}", rgba))
    return sprites


def read_atlas(json_paths: list[Path]) -> list[tuple[dict, np.ndarray]]:
    sheets = []
    for path in json_paths:
        layout = json.loads(path.read_text())
        with Image.open(path.parent / layout["meta"]["image"]) as image:
            assert image.mode == "RGBA"
            sheets.append((layout, np.asarray(image)))
    return sheets


def check_layout(layout: dict, pixels: np.ndarray) -> None:
    """The TexturePacker JSON (Hash) layout: keys, types, and frames inside the sheet."""
    assert set(layout) == {"frames", "meta"}
    meta = layout["meta"]
    assert {"app", "version", "image", "format", "size", "scale"} <= set(meta)
    assert (meta["format"], meta["scale"]) == ("RGBA8888", "1")
    assert meta["size"] == {"w": pixels.shape[1], "h": pixels.shape[0]}
    for name, frame in layout["frames"].items():
        assert isinstance(name, str) and set(frame) == FRAME_KEYS
        assert frame["rotated"] is False and isinstance(frame["trimmed"], bool)
        box, placed, source = frame["frame"], frame["spriteSourceSize"], frame["sourceSize"]
        assert set(box) == set(placed) == {"x", "y", "w", "h"} and set(source) == {"w", "h"}
        assert all(isinstance(v, int) and not isinstance(v, bool) for d in (box, placed, source) for v in d.values())
        assert box["x"] >= 0 and box["y"] >= 0 and box["w"] >= 1 and box["h"] >= 1
        assert box["x"] + box["w"] <= pixels.shape[1] and box["y"] + box["h"] <= pixels.shape[0]
        assert (placed["w"], placed["h"]) == (box["w"], box["h"])
        assert 0 <= placed["x"] <= source["w"] - box["w"] and 0 <= placed["y"] <= source["h"] - box["h"]
        assert frame["trimmed"] == ((placed["x"], placed["y"], box["w"], box["h"]) != (0, 0, source["w"], source["h"]))


def cut(pixels: np.ndarray, frame: dict) -> np.ndarray:
    box = frame["frame"]
    return pixels[box["y"] : box["y"] + box["h"], box["x"] : box["x"] + box["w"]]


def assert_apart(frames: list[dict], padding: int) -> None:
    """No two frames overlap, and they are at least `padding` pixels apart."""
    for a, b in itertools.combinations([f["frame"] for f in frames], 2):
        assert (
            a["x"] + a["w"] + padding <= b["x"]
            or b["x"] + b["w"] + padding <= a["x"]
            or a["y"] + a["h"] + padding <= b["y"]
            or b["y"] + b["h"] + padding <= a["y"]
        ), (a, b)


def test_frames_cut_from_the_sheet_are_the_sprites(tmp_path):
    sprites = random_sprites(40, seed=1)
    paths = pack_atlas(sprites, tmp_path, name="items", max_size=1024, padding=3)
    assert [p.name for p in paths] == ["items-0.json"]
    ((layout, pixels),) = read_atlas(paths)
    check_layout(layout, pixels)
    assert list(layout["frames"]) == sorted(s.name for s in sprites)
    for sprite in sprites:
        frame = layout["frames"][sprite.name]
        assert np.array_equal(cut(pixels, frame), sprite.rgba), sprite.name
        assert frame["trimmed"] is False
        assert frame["sourceSize"] == {"w": sprite.rgba.shape[1], "h": sprite.rgba.shape[0]}
    assert_apart(list(layout["frames"].values()), padding=3)
    covered = sum(f["frame"]["w"] * f["frame"]["h"] for f in layout["frames"].values())
    assert (pixels[..., 3] > 0).sum() <= covered  # everything outside the frames is transparent


def test_small_sprites_get_a_small_sheet(tmp_path):
    sprites = [AtlasInput(f"s{i}", np.full((30, 30, 4), i, np.uint8)) for i in range(16)]
    ((layout, pixels),) = read_atlas(pack_atlas(sprites, tmp_path, max_size=4096, padding=2))
    assert pixels.shape[0] <= 128 and pixels.shape[1] <= 128  # 16 frames of 32x32 with their padding
    assert_apart(list(layout["frames"].values()), padding=2)


def test_trimmed_frames_go_back_to_their_place(tmp_path):
    sprites = random_sprites(12, seed=2, margin=5)
    offset = AtlasInput("placed", sprites[0].rgba, source_size=(300, 200), offset=(40, 70))
    paths = pack_atlas([*sprites, offset], tmp_path, name="trimmed", padding=1, trim=True)
    ((layout, pixels),) = read_atlas(paths)
    check_layout(layout, pixels)
    for sprite in [*sprites, offset]:
        frame = layout["frames"][sprite.name]
        assert frame["trimmed"] is True
        source = frame["sourceSize"]
        rebuilt = np.zeros((source["h"], source["w"], 4), np.uint8)
        x, y, w, h = (frame["spriteSourceSize"][k] for k in "xywh")
        rebuilt[y : y + h, x : x + w] = cut(pixels, frame)
        expected = np.zeros_like(rebuilt)
        ox, oy = sprite.offset
        expected[oy : oy + sprite.rgba.shape[0], ox : ox + sprite.rgba.shape[1]] = sprite.rgba
        visible = expected[..., 3] > 0
        assert np.array_equal(rebuilt[..., 3], expected[..., 3])
        assert np.array_equal(rebuilt[visible], expected[visible])
    assert layout["frames"]["placed"]["sourceSize"] == {"w": 300, "h": 200}
    assert layout["frames"]["placed"]["spriteSourceSize"]["x"] == 45


def test_several_sheets_when_one_is_not_enough(tmp_path):
    sprites = random_sprites(30, seed=3, low=40, high=100)
    paths = pack_atlas(sprites, tmp_path, name="big", max_size=256, padding=2)
    assert len(paths) >= 3
    assert [p.name for p in paths] == [f"big-{i}.json" for i in range(len(paths))]
    seen = {}
    for layout, pixels in read_atlas(paths):
        check_layout(layout, pixels)
        assert pixels.shape[0] <= 256 and pixels.shape[1] <= 256
        others = {p.name for p in paths} - {layout["meta"]["image"].replace(".png", ".json")}
        assert set(layout["meta"]["related_multi_packs"]) == others
        assert_apart(list(layout["frames"].values()), padding=2)
        for name, frame in layout["frames"].items():
            assert name not in seen
            seen[name] = cut(pixels, frame)
    assert sorted(seen) == sorted(s.name for s in sprites)
    assert all(np.array_equal(seen[s.name], s.rgba) for s in sprites)
    # Packing fewer sprites under the same name leaves no stale numbered sheets behind.
    assert [p.name for p in pack_atlas(sprites[:2], tmp_path, name="big", max_size=256)] == ["big-0.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-0.json", "big-0.png"]


def test_same_sprites_in_any_order_give_byte_identical_files(tmp_path):
    sprites = random_sprites(25, seed=4)
    shuffled = sprites[:]
    random.Random(5).shuffle(shuffled)
    first = pack_atlas(sprites, tmp_path / "a", name="s", max_size=256)
    second = pack_atlas(shuffled, tmp_path / "b", name="s", max_size=256)
    assert len(first) > 1 and [p.name for p in first] == [p.name for p in second]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_sprite_larger_than_the_sheet_is_named(tmp_path):
    sprites = [*random_sprites(3, seed=6), AtlasInput("boss", np.zeros((100, 300, 4), np.uint8))]
    with pytest.raises(AtlasError, match=r"sprite 'boss' is 300x100 pixels, larger than the maximum sheet size 256"):
        pack_atlas(sprites, tmp_path, max_size=256)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: pack_atlas([], d), "no sprites to pack"),
        (lambda d: pack_atlas(random_sprites(2, 0) * 2, d), "two sprites are named 'sprite-000'"),
        (lambda d: pack_atlas(random_sprites(1, 0), d, name="../x"), "atlas name '../x' is not a safe file name"),
        (lambda d: pack_atlas(random_sprites(1, 0), d, padding=-1), "padding must be 0 to 1024"),
        (lambda d: pack_atlas(random_sprites(1, 0), d, max_size=0), "maximum sheet size must be 1 to 16384"),
        (lambda d: AtlasInput("a", np.zeros((4, 4, 3), np.uint8)), "sprite 'a': expected a uint8 RGBA array"),
        (
            lambda d: AtlasInput("a", np.zeros((4, 4, 4), np.uint8), source_size=(6, 6), offset=(3, 0)),
            r"sprite 'a' at \(3, 0\) does not fit in its 6x6 canvas",
        ),
    ],
)
def test_errors(tmp_path, call, message):
    with pytest.raises(AtlasError, match=message):
        call(tmp_path)
