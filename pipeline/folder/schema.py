"""The manifest's one explicit, versioned Arrow schema: the same types whatever the data.

Nulls are typed, `finished_at` is a UTC timestamp, seeds are uint64 (the whole 0 ... 2^64-1 range), and the
table's passthrough columns follow: a Parquet table's with their own Arrow types, the others as text (a text
cell unchanged, any other value as its JSON), so the manifests of different runs can be read together
(pyarrow.dataset, Polars, DuckDB).
"""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum

import orjson
import pyarrow as pa

from ..common.clock import iso_utc
from ..input.layer_inputs import INPUT_COLUMNS
from ..input.passthrough import json_default, json_value
from ..input.rows import PARAM_COLUMNS
from ..input.sprite_settings import SpriteSettings

VERSION = "4"  # 3: per-row `loras`, checkpoint and VAE identities in `model`, images of expanded rows
#    (source_id, image_index, templates) and derived sprites; 4: img2img, hires and layer modes (LAYERS)
IMAGE = pa.struct(
    [("url", pa.string()), ("content_type", pa.string()), ("file_name", pa.string()), ("file_size", pa.int64()),
     ("width", pa.int32()), ("height", pa.int32())]
)  # fmt: skip
MODEL = pa.struct(
    [(name, pa.string()) for name in ("base", "vae", "unet_weights", "decoder_weights", "injection")]
    + [("strength", pa.float64())]
    + [(name, pa.string()) for name in ("scheduler", "dtype", "vae_dtype", "safety_checker")]
    # single-file checkpoint and VAE: SHA-256 and AUTOMATIC1111's short hash (null for folders and hub ids)
    + [(name, pa.string()) for name in ("base_config", "base_sha256", "model_hash", "vae_sha256", "vae_hash")]
)
# One entry per LoRA a row ran with (the run's and its own): what the user wrote, the content, AUTOMATIC1111's hash.
LORA = pa.struct([("name", pa.string()), ("source", pa.string()), ("weight", pa.float64()), ("sha256", pa.string()),
                  ("a1111_hash", pa.string())])  # fmt: skip
ENVIRONMENT = pa.struct(
    [(name, pa.string()) for name in ("python", "torch", "diffusers", "transformers", "accelerate", "device",
                                      "device_name", "dtype")]
    + [("batch_size", pa.int32()), ("tta", pa.bool_()), ("decoder_sub_batch", pa.int32()),
       ("cpu_threads", pa.int32()), ("host", pa.string()), ("world_size", pa.int32())]
)  # fmt: skip
PARAMS = [
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.uint64()),
    ("guidance_scale", pa.float64()),
    ("num_inference_steps", pa.int32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("enable_safety_checker", pa.bool_()),
]
BOX = pa.struct([(name, pa.int32()) for name in ("x", "y", "w", "h")])
SPRITE_SETTINGS = pa.struct(
    [("trim", pa.bool_()), ("alpha_threshold", pa.int32()), ("pad", pa.int32()), ("square", pa.bool_()),
     ("pot", pa.bool_()), ("sizes", pa.list_(pa.int32())), ("bleed", pa.bool_()), ("premultiplied", pa.bool_())]
)  # fmt: skip
SPRITE = pa.struct(
    [("label", pa.string()), ("url", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
     ("file_size", pa.int64()), ("sha256", pa.string()), ("trim_box", BOX), ("content_box", BOX),
     ("settings", SPRITE_SETTINGS)]
)  # fmt: skip
IMAGE_OF_ROW = [  # which image of its table row a record is, and what its prompts were drawn from
    ("source_id", pa.string()),
    ("image_index", pa.int32()),
    ("template", pa.string()),
    ("negative_template", pa.string()),
]
# An input image a row used: its column (image, foreground, background, blend), location and content.
INPUT_IMAGE = pa.struct([("name", pa.string()), ("url", pa.string()), ("sha256", pa.string()),
                         ("width", pa.int32()), ("height", pa.int32())])  # fmt: skip
LAYERS = [  # null where the row does not use them (mode: fg for every text-to-image row)
    ("mode", pa.string()),
    ("strength", pa.float64()),
    ("hires_scale", pa.float64()),
    ("hires_strength", pa.float64()),
    ("inputs", pa.list_(INPUT_IMAGE)),
]
SCHEMA = pa.schema(
    [("id", pa.string()), ("row", pa.int64()), ("status", pa.string()), ("error", pa.string())]
    + PARAMS
    + [("loras", pa.list_(LORA))]
    + [("has_nsfw_concepts", pa.bool_()), ("image", IMAGE), ("sha256", pa.string()), ("request_hash", pa.string()),
       ("batch_index", pa.int64()), ("batch_size", pa.int32()), ("generation_seconds", pa.float64()),
       ("write_seconds", pa.float64()), ("finished_at", pa.timestamp("ms", tz="UTC")), ("rank", pa.int32()),
       ("model", MODEL), ("environment", ENVIRONMENT), ("input", pa.string())]
    + IMAGE_OF_ROW
    + [("sprites", pa.list_(SPRITE))]
    + LAYERS,
    metadata={"layerdiffuse.manifest_version": VERSION},
)  # fmt: skip
MANIFEST_FIELDS = tuple(SCHEMA.names)
_NAMES = frozenset(MANIFEST_FIELDS)
CONTEXT_FIELDS = ("model", "environment", "rank")  # the same for every record of a process
# A record in a part log: no context, passthrough columns as JSON text (`extra`).
PART_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in CONTEXT_FIELDS] + [pa.field("extra", pa.string())])
assert tuple(name for name, _ in PARAMS) == PARAM_COLUMNS
assert tuple(SPRITE_SETTINGS.names) == tuple(f.name for f in fields(SpriteSettings))
# Table columns that would clash with a manifest field (the parameters and `id` are the table's own).
RESERVED_COLUMNS = frozenset(MANIFEST_FIELDS) - {"id", "loras", *PARAM_COLUMNS, *INPUT_COLUMNS}


def manifest_schema(passthrough: pa.Schema) -> pa.Schema:
    return pa.schema([*SCHEMA, *passthrough], metadata=SCHEMA.metadata)


def json_record(row: dict) -> dict:
    """A row as Arrow gives it (from manifest.parquet or a log) -> the record as manifest.jsonl has it."""
    if row.get("finished_at") is not None and not isinstance(row["finished_at"], str):
        row["finished_at"] = iso_utc(row["finished_at"])
    if isinstance(row.get("input"), str):
        row["input"] = json.loads(row["input"])
    for name in row.keys() - _NAMES:  # passthrough cells of manifest.parquet, with their own Arrow types
        row[name] = json_value(row[name])
    return row


def json_line(record: dict) -> bytes:
    """A record as one line of manifest.jsonl: orjson (2-3x the standard encoder on these records), or the
    standard one for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(record, default=json_default, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return (json.dumps(record, ensure_ascii=False, default=json_default) + "\n").encode()


class Status(str, Enum):
    """A row's `status` in the manifest; a row the safety checker flagged is `ok` with has_nsfw_concepts."""

    OK = "ok"
    FAILED = "failed"
    INVALID = "invalid"

    def __str__(self) -> str:
        return self.value
