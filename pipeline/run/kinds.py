"""Which model call makes a batch's images: one per kind of row (rows of a batch share their kind,
input/layer_inputs.row_kind). docs/layerdiffuse.md §7-9 say what each does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..input.rows import Row


def render_images(model, rows: Sequence[Row], inputs: Mapping[str, np.ndarray], tta: bool,
                  sub_batch: int | None) -> np.ndarray:  # fmt: skip
    """uint8 images, one per row: RGBA [B, H, W, 4] for foregrounds (text-to-image, img2img, hires,
    blend2fg), RGB [B, H, W, 3] for fg2blend, bg2blend and blend2bg, and [B, H, 3W, 4] for `layers`
    (foreground | blend | background side by side). `inputs`: {column: uint8 [B, H, W, 4]} of the rows."""
    from .. import model as m

    first, run = rows[0], {"tta": tta, "decoder_sub_batch": sub_batch}
    if first.mode == "layers":
        return m.side_by_side(m.layers(model, rows, inputs.get("background"), **run))
    if first.mode != "fg":
        return m.layer_images(model, first.mode, rows, inputs, **run)
    if first.image is not None:
        base = m.img2img_rgba(model, rows, inputs["image"], [row.strength for row in rows], **run)
    else:
        base = m.generate_rgba(model, rows, **run)
    if first.hires_scale is None:
        return base
    return m.hires_rgba(model, rows, base, first.hires_scale, [row.hires_strength for row in rows], **run)
