"""The rows a table gives: a valid row with every parameter resolved, and an invalid row with its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lora_refs import LoraRef

# Columns a table may carry that configure a row; every other column is passed through.
PARAM_COLUMNS = (
    "prompt",
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "width",
    "height",
    "enable_safety_checker",
)
# Rows are denoised together only when they share these (one sampling call per batch); `loras`: the row's
# own `loras` cell as written (every row adds the run's LoRAs, so equal cells mean equal LoRA sets).
# `kind`: which model call (layer_inputs.row_kind); None for plain text-to-image rows, so their batches are
# what they were before img2img, hires and the layer modes existed.
BATCH_FIELDS = ("width", "height", "num_inference_steps", "guidance_scale", "loras", "kind")


@dataclass(frozen=True)
class Row:
    """One valid input row with every parameter resolved."""

    number: int  # 1-based position among the table's data rows (the header is not counted)
    key: str  # `id`, or `row-000001` from the position; the image's file stem
    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    width: int
    height: int
    enable_safety_checker: bool
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # passthrough columns
    loras: tuple[LoraRef, ...] = ()  # its own `loras` cell (the run's LoRAs are added when planning)
    # A table row may give several images (num_images, templates); each is a Row of its own:
    image_index: int = 0  # image i of its table row has the row's seed + i
    source_id: str | None = None  # the table row's key; None: this row is the table row itself (same key)
    template: str | None = None  # the prompt's template when the prompt was drawn from one
    negative_template: str | None = None  # the same for the negative prompt
    position: int | None = None  # place among the manifest's records; None: number - 1 (one per table row)
    # img2img, hires and layer modes (layer_inputs.py): None where the row does not use them
    image: str | None = None  # the RGBA input's location (relative paths already resolved)
    strength: float | None = None
    hires_scale: float | None = None
    hires_strength: float | None = None
    mode: str = "fg"
    foreground: str | None = None
    background: str | None = None
    blend: str | None = None

    @property
    def place(self) -> int:
        """Its place among the manifest's records."""
        return self.number - 1 if self.position is None else self.position

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAM_COLUMNS}

    @property
    def kind(self) -> tuple | None:
        from .layer_inputs import row_kind

        return row_kind(self.mode, self.image, self.hires_scale, self.background)

    def inputs(self) -> dict[str, Any]:
        """The img2img, hires and layer-mode values the row uses (nothing for a plain text-to-image row)."""
        from .layer_inputs import INPUT_COLUMNS

        used = {name: getattr(self, name) for name in INPUT_COLUMNS if getattr(self, name) is not None}
        return {} if used == {"mode": "fg"} else used

    def images(self) -> dict[str, str]:
        """{column: location} of the input images the row uses."""
        from .layer_inputs import IMAGE_COLUMNS

        return {name: getattr(self, name) for name in IMAGE_COLUMNS if getattr(self, name) is not None}

    @property
    def batch_signature(self) -> tuple:
        return tuple(getattr(self, name) for name in BATCH_FIELDS)


@dataclass(frozen=True)
class InvalidRow:
    number: int
    key: str
    errors: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict, compare=False)  # the raw cells, for the manifest

    @property
    def error(self) -> str:
        return "; ".join(self.errors)
