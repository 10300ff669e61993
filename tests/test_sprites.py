"""Sprite derivation: trim, pad, square / power-of-two canvas, premultiplied resampling, bleed, export."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.sprites.derive import (
    Sprite,
    SpriteSettings,
    alpha_bbox,
    bleed,
    crop,
    derive,
    parse_sizes,
    resize_premultiplied,
)


def disc(size=256, colour=(255, 255, 255), radius=100.0, centre=(120.5, 140.5), empty=(0, 0, 0)) -> np.ndarray:
    """An anti-aliased disc of `colour`; fully transparent pixels carry the colour `empty`."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(xx - centre[0], yy - centre[1])
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 3] = np.rint(np.clip(radius - distance + 0.5, 0, 1) * 255)
    rgba[..., :3] = colour
    rgba[rgba[..., 3] == 0, :3] = empty
    return rgba


def radial(size=256, colour=(30, 200, 90), empty=(255, 0, 255)) -> np.ndarray:
    """Alpha falling from 255 in the centre to 0 at the rim: many faint pixels."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 3] = np.rint(np.clip(1 - distance / (size / 2), 0, 1) * 255)
    rgba[..., :3] = colour
    rgba[rgba[..., 3] == 0, :3] = empty
    return rgba


def straight_resize(rgba: np.ndarray, size) -> np.ndarray:
    """The naive way: every channel resampled on its own, colour not weighted by alpha."""
    channels = [np.asarray(Image.fromarray(rgba[..., c]).resize(size, Image.Resampling.HAMMING)) for c in range(4)]
    return np.stack(channels, axis=-1)


def visible_colours(rgba: np.ndarray) -> np.ndarray:
    return rgba[rgba[..., 3] > 0][:, :3].astype(int)


@pytest.mark.parametrize("size", [64, 100, 37])
def test_downscaled_white_disc_has_no_dark_fringe(size):
    source = disc()
    (sprite,) = derive(source, SpriteSettings(trim=True, sizes=(size,)))
    assert sprite.size == (size, size)
    faint = (sprite.rgba[..., 3] > 0) & (sprite.rgba[..., 3] < 255)
    assert faint.sum() > size  # the edge is anti-aliased, so the check below looks at real edge pixels
    assert visible_colours(sprite.rgba).min() == 255
    # The same resize on straight colour darkens the edge: this test would catch it.
    naive = straight_resize(crop(source, sprite.trim_box), (size, size))
    assert visible_colours(naive).min() < 200


@pytest.mark.parametrize("size", [64, 37, 300])
def test_faint_pixels_keep_their_colour(size):
    source = radial()
    out = resize_premultiplied(source, (size, size))
    assert (out[..., 3] > 0).sum() > size
    assert np.array_equal(np.unique(visible_colours(out), axis=0), [[30, 200, 90]])
    # Pillow's own RGBA resize premultiplies in 8 bits and loses the colour of faint pixels.
    pillow = np.asarray(Image.fromarray(source).resize((size, size), Image.Resampling.HAMMING))
    assert np.abs(visible_colours(pillow) - (30, 200, 90)).max() > 20


def test_hard_edges_get_no_halo_and_stay_opaque_inside():
    source = np.zeros((256, 256, 4), np.uint8)
    source[64:192, 64:192] = (200, 50, 20, 255)
    (sprite,) = derive(source, SpriteSettings(sizes=(50,)))
    alpha = sprite.rgba[..., 3]
    # The square spans 12.5 .. 37.5 in output pixels: opaque strictly inside, nothing beyond its edge pixel.
    assert (alpha[13:37, 13:37] == 255).all()
    outside = np.ones_like(alpha, bool)
    outside[12:38, 12:38] = False
    assert (alpha[outside] == 0).all()
    assert np.array_equal(np.unique(visible_colours(sprite.rgba), axis=0), [[200, 50, 20]])


def test_trim_box_is_the_exact_bounding_box_above_the_threshold():
    rng = np.random.default_rng(3)
    source = np.zeros((40, 60, 4), np.uint8)
    source[..., :3] = rng.integers(0, 256, (40, 60, 3))
    source[10:20, 15:35, 3] = 255
    source[25, 50, 3] = 9  # inside the box only when the threshold is below 9
    source[2, 3, 3] = 8
    assert alpha_bbox(source, 9) == (15, 10, 20, 10)
    assert alpha_bbox(source, 8) == (15, 10, 36, 16)
    assert alpha_bbox(source, 0) == (3, 2, 48, 24)
    (sprite,) = derive(source, SpriteSettings(trim=True, alpha_threshold=8))
    assert (sprite.label, sprite.trim_box, sprite.content_box, sprite.source_size) == (
        "full",
        (15, 10, 36, 16),
        (0, 0, 36, 16),
        (60, 40),
    )
    assert np.array_equal(sprite.rgba, source[10:26, 15:51])


def test_all_transparent_image_gives_transparent_sprites_of_the_asked_sizes():
    source = np.zeros((64, 64, 4), np.uint8)
    source[..., :3] = 180
    source[5, 5, 3] = 3  # below the threshold: counts as empty
    (full,) = derive(source, SpriteSettings(trim=True, alpha_threshold=3, pad=2))
    assert full.trim_box == (0, 0, 0, 0) and full.size == (5, 5) and not full.rgba.any()
    sized = derive(source, SpriteSettings(trim=True, alpha_threshold=3, sizes=(32, 16)))
    assert [(s.label, s.size, s.rgba.any()) for s in sized] == [("32", (32, 32), False), ("16", (16, 16), False)]


@pytest.mark.parametrize(
    ("settings", "size", "content_box"),
    [
        (SpriteSettings(), (30, 10), (0, 0, 30, 10)),
        (SpriteSettings(pad=3), (36, 16), (3, 3, 30, 10)),
        (SpriteSettings(pad=3, square=True), (36, 36), (3, 13, 30, 10)),
        (SpriteSettings(pad=3, pot=True), (64, 16), (17, 3, 30, 10)),
        (SpriteSettings(pad=3, square=True, pot=True), (64, 64), (17, 27, 30, 10)),
        (SpriteSettings(square=True), (30, 30), (0, 10, 30, 10)),
        (SpriteSettings(pad=2, sizes=(64,)), (64, 24), (2, 2, 60, 20)),
        (SpriteSettings(pad=2, square=True, sizes=(64,)), (64, 64), (2, 22, 60, 20)),
        (SpriteSettings(pad=1, pot=True, sizes=(100,)), (128, 64), (15, 15, 98, 33)),
    ],
)
def test_canvas_sizes_and_centring(settings, size, content_box):
    rng = np.random.default_rng(0)
    content = rng.integers(0, 256, (10, 30, 4), dtype=np.uint8)
    content[..., 3] = 255
    source = np.zeros((50, 70, 4), np.uint8)
    source[20:30, 5:35] = content
    (sprite,) = derive(source, SpriteSettings(**{**settings.to_dict(), "trim": True}))
    assert (sprite.size, sprite.content_box, sprite.trim_box) == (size, content_box, (5, 20, 30, 10))
    x, y, w, h = content_box
    inside = sprite.rgba[y : y + h, x : x + w]
    assert (inside[..., 3] == 255).all()
    if not settings.sizes:
        assert np.array_equal(inside, content)
    border = sprite.rgba.copy()
    border[y : y + h, x : x + w] = 0
    assert not border.any()  # padding and centring margins are transparent black


def test_one_sprite_per_size_largest_first():
    sprites = derive(disc(), SpriteSettings(trim=True, sizes=(64, 256, 128)))
    assert [s.label for s in sprites] == ["256", "128", "64"]
    assert [s.size for s in sprites] == [(256, 256), (128, 128), (64, 64)]
    assert all(s.trim_box == sprites[0].trim_box for s in sprites)
    assert isinstance(sprites[0], Sprite) and json.dumps(sprites[0].to_dict())


def test_bleed_copies_the_nearest_visible_colour_and_keeps_alpha():
    rng = np.random.default_rng(7)
    source = np.zeros((24, 32, 4), np.uint8)
    points = rng.choice(24 * 32, 12, replace=False)
    ys, xs = np.divmod(points, 32)
    source[ys, xs, :3] = rng.integers(0, 256, (12, 3))
    source[ys, xs, 3] = rng.integers(1, 256, 12)
    out = bleed(source)
    assert np.array_equal(out[..., 3], source[..., 3])
    assert np.array_equal(out[ys, xs], source[ys, xs])
    for y, x in zip(*np.nonzero(source[..., 3] == 0), strict=True):
        distances = (ys - y) ** 2 + (xs - x) ** 2
        nearest = {tuple(source[ys[i], xs[i], :3]) for i in np.flatnonzero(distances == distances.min())}
        assert tuple(out[y, x, :3]) in nearest


def test_bleed_in_derive_fills_padding_and_resized_edges():
    (sprite,) = derive(disc(colour=(10, 120, 250)), SpriteSettings(trim=True, pad=4, sizes=(48,), bleed=True))
    assert np.array_equal(np.unique(sprite.rgba[..., :3].reshape(-1, 3), axis=0), [[10, 120, 250]])
    (plain,) = derive(disc(colour=(10, 120, 250)), SpriteSettings(trim=True, pad=4, sizes=(48,)))
    assert np.array_equal(sprite.rgba[..., 3], plain.rgba[..., 3])


def test_premultiplied_export_is_colour_times_alpha_rounded():
    rng = np.random.default_rng(11)
    source = rng.integers(0, 256, (33, 17, 4), dtype=np.uint8)
    (sprite,) = derive(source, SpriteSettings(premultiplied=True))
    expected = np.rint(source[..., :3].astype(np.float64) * source[..., 3:4] / 255.0)
    assert np.array_equal(sprite.rgba[..., :3], expected.astype(np.uint8))
    assert np.array_equal(sprite.rgba[..., 3], source[..., 3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha_threshold": 255}, "alpha_threshold must be an integer from 0 to 254"),
        ({"alpha_threshold": -1}, "alpha_threshold must be an integer from 0 to 254"),
        ({"alpha_threshold": 1.5}, "alpha_threshold must be an integer"),
        ({"pad": True}, "pad must be an integer"),
        ({"pad": -2}, "pad must be an integer from 0"),
        ({"sizes": (0,)}, "sizes must be an integer from 1"),
        ({"sizes": "256"}, "sizes must be a list of integers"),
        ({"sizes": (64, 32, 64)}, "lists a size twice"),
        ({"sizes": (8,), "pad": 4}, "size 8 leaves no room for the content inside a padding of 4"),
        ({"trim": "yes"}, "trim must be true or false"),
        ({"bleed": True, "premultiplied": True}, "bleed and premultiplied exclude each other"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpriteSettings(**kwargs)


def test_settings_normalise_and_round_trip():
    settings = SpriteSettings(trim=True, pad=2, sizes=[64, 512, 256], bleed=True)
    assert settings.sizes == (512, 256, 64)
    from_numpy = SpriteSettings(pad=np.int64(2), sizes=np.array([64]), alpha_threshold=np.uint8(5)).to_dict()
    assert json.dumps(from_numpy) == json.dumps(SpriteSettings(pad=2, sizes=(64,), alpha_threshold=5).to_dict())
    assert SpriteSettings(**json.loads(json.dumps(settings.to_dict()))) == settings
    assert settings.active and not SpriteSettings().active


def test_parse_sizes():
    assert parse_sizes("512, 256,64") == (512, 256, 64)
    for bad in ("", "512x", "a,b", "-3", "1.5"):
        with pytest.raises(ValueError, match="comma-separated whole numbers"):
            parse_sizes(bad)


@pytest.mark.parametrize("array", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 4), np.float32), np.zeros((0, 4, 4))])
def test_derive_rejects_what_is_not_rgba(array):
    with pytest.raises(ValueError, match="RGBA|at least 1x1"):
        derive(array, SpriteSettings())
