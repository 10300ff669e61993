"""What became of a row, and the one function that turns a row and its outcome into a manifest record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..common.clock import utc_now
from ..folder.schema import LORA, MANIFEST_FIELDS, Status
from ..input.layer_inputs import INPUT_COLUMNS
from ..input.passthrough import text_cell
from ..input.rows import PARAM_COLUMNS, InvalidRow, Row
from ..plan.batches import Batch
from ..plan.lora_sets import LoraSet


@dataclass(frozen=True)
class Rendered:
    """An image to write; `checked`: the safety checker looked at it and found nothing."""

    rgba: np.ndarray
    checked: bool = False


@dataclass(frozen=True)
class Flagged:
    """The safety checker flagged the image: a fully transparent placeholder of the same size is written."""

    rgba: np.ndarray


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Invalid:
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    """Done by an earlier run for the same request: nothing is written."""


Outcome = Union[Rendered, Flagged, Failed, Invalid, Skipped]  # noqa: UP007 (a runtime alias on Python 3.10)
HAS_IMAGE = (Rendered, Flagged)


@dataclass(frozen=True)
class Provenance:
    """Where a process's rows came from; the same for every record it writes."""

    model: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    rank: int = 0


@dataclass(frozen=True)
class Written:
    """What the writer put on disk for a row (the hosted API's image fields)."""

    image: dict
    sha256: str
    write_seconds: float  # encoding and writing
    encode_seconds: float = 0.0
    sprites: list[dict] | None = None  # derived sprites (schema.SPRITE), when sprite settings are active


def manifest_record(
    row: Row | InvalidRow,
    outcome: Outcome,
    *,
    request_hash: str | None = None,
    batch: Batch | None = None,
    provenance: Provenance | None = None,
    written: Written | None = None,
    generation_seconds: float | None = None,
) -> dict[str, Any]:
    """Every manifest field (null where it does not apply), then the table's passthrough columns."""
    record: dict[str, Any] = dict.fromkeys(MANIFEST_FIELDS)
    record.update(id=row.key, row=row.number)
    if isinstance(outcome, Invalid):
        record.update(source_id=row.key)
        # Parameters stay null (their cells may be of any type); the raw cells are kept as text in `input`.
        record.update(status=Status.INVALID.value, error="; ".join(outcome.errors), input=_cells(row.values))
        return {**record, **_passthrough(row.values)}
    record.update(row.params(), request_hash=request_hash, finished_at=utc_now())
    record.update(source_id=row.source_id or row.key, image_index=row.image_index, template=row.template,
                  negative_template=row.negative_template)  # fmt: skip
    record.update(mode=row.mode, strength=row.strength, hires_scale=row.hires_scale, hires_strength=row.hires_strength)
    if batch is not None:
        record.update(batch_index=batch.index, batch_size=len(batch.rows), loras=lora_records(batch.loras))
        record.update(inputs=input_records(row, batch))
    if provenance is not None:
        record.update(model=provenance.model, environment=provenance.environment, rank=provenance.rank)
    if isinstance(outcome, Failed):
        record.update(status=Status.FAILED.value, error=outcome.error)
    elif isinstance(outcome, HAS_IMAGE):
        flagged = True if isinstance(outcome, Flagged) else (False if outcome.checked else None)
        record.update(status=Status.OK.value, has_nsfw_concepts=flagged, generation_seconds=generation_seconds)
        if written is not None:
            record.update(image=written.image, sha256=written.sha256, write_seconds=written.write_seconds,
                          sprites=written.sprites)  # fmt: skip
    return {**record, **_passthrough(row.extra)}


def lora_records(loras: LoraSet) -> list[dict] | None:
    """The manifest's `loras` of a row: one entry per LoRA it ran with; null when they could not be used."""
    if loras.error:
        return None
    from ..model.provenance import lora_record

    fields = [f.name for f in LORA]
    return [{name: value for name, value in lora_record(lora).items() if name in fields} for lora in loras.loras]


def input_records(row: Row, batch: Batch) -> list[dict] | None:
    """The manifest's `inputs`: each input image the row used, with the content its request covers."""
    from ..common.storage import display

    images = row.images()
    if not images:
        return None
    records = []
    for name, location in images.items():
        file = batch.inputs.get(location)
        records.append({"name": name, "url": display(location), "sha256": file.sha256 if file else None,
                        "width": file.width if file and file.sha256 else None,
                        "height": file.height if file and file.sha256 else None})  # fmt: skip
    return records


def _passthrough(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in ("id", "loras", *PARAM_COLUMNS, *INPUT_COLUMNS)}


def _cells(values: dict) -> dict:
    """An invalid row's raw cells as text (any other value as its JSON): its cells may be of any type."""
    return {k: text_cell(v) for k, v in values.items()}
