"""Render one row under a sequence of LoRA sets in this process; print each image's SHA-256 as JSON.

`python -m tests.model.render_lora_sets MODEL_DIR A.safetensors B.safetensors none,A:1,B:0.5,...`: the
tests run the whole sequence in one process and each set alone in a fresh one, and compare the bytes.
A set is `none` or `+`-joined `NAME:WEIGHT` terms over the two LoRAs A and B.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline.input.config import ModelConfig
from pipeline.input.lora_refs import LoraRef
from pipeline.model import generate_rgba, load_model
from pipeline.model.lora import LoraAdapters, resolve_lora
from tests.model.files import Req

ROW = [Req("a pixel-art sword", 7, num_inference_steps=2)]


def lora_set(spec: str, files: dict[str, str]) -> list:
    if spec == "none":
        return []
    terms = [term.split(":") for term in spec.split("+")]
    return [resolve_lora(LoraRef(files[name], float(weight))) for name, weight in terms]


def main(model_dir: str, a: str, b: str, sequence: str) -> None:
    root = Path(model_dir)
    model = load_model(ModelConfig(base=str(root / "sdxl"), layerdiffuse=str(root / "layerdiffusion-v1"),
                                   dtype="float32", device="cpu"))  # fmt: skip
    adapters = LoraAdapters(model.pipe)
    hashes = []
    for spec in sequence.split(","):
        adapters.activate(lora_set(spec, {"A": a, "B": b}))
        hashes.append(hashlib.sha256(generate_rgba(model, ROW, tta=False).tobytes()).hexdigest())
    print(json.dumps(hashes))


if __name__ == "__main__":
    main(*sys.argv[1:])
