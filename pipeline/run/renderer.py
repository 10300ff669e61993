"""The seam between the run loop and the model: the rows of one batch in, one outcome per row out.

The loop makes its renderer once (`RendererFactory`, given a `RenderSetup`) and asks it for every batch.
`ModelRenderer` serves the tiny model and real SDXL alike: it loads the model, makes each batch's LoRA set the
active one, and retries a failed batch row by row. Tests and benchmarks pass factories of their own: a
`ModelRenderer` subclass whose `images` fails or waits, or a stand-in device that loads nothing.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..common.logs import Log
from ..input.config import Config
from ..input.rows import Row
from ..plan.batches import Batch
from ..plan.inputs import InputFile, load_images, problem
from ..plan.lora_sets import LoraSet, LoraSwitch
from .outcome import Failed, Outcome, Rendered


@dataclass(frozen=True)
class RenderSetup:
    """What a renderer is made from, decided by the plan."""

    config: Config
    sources: Any  # model.sources.Sources, resolved once
    run_loras: LoraSet  # the run's own LoRAs: one that cannot be used stops the run (exit 4)
    local_rank: int  # which accelerator of this machine, under a launcher
    safety_checker: bool  # some row to render asks for the check
    log: Log
    encoder: bool = False  # some row to render encodes an image (img2img, hires): load the transparent encoder
    modes: tuple[str, ...] = ()  # the conditional layer models rows to render run through


class Renderer(Protocol):
    """Renders batches; says where (device, dtype) and with which weights, for the records."""

    device: Any  # torch.device: writer threads run beside an accelerator, not on a CPU
    device_name: str  # what the records say it is: "NVIDIA H100 80GB HBM3", the CPU's name
    dtype: Any  # torch.dtype
    weights: dict  # the identity of the weights that make the images
    safety_checker: Any  # None unless `RenderSetup.safety_checker`

    def render(self, batch: Batch) -> list[Outcome]:
        """One `Rendered` or `Failed` per row of the batch, in order."""


RendererFactory = Callable[[RenderSetup], Renderer]


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


class ModelRenderer:
    """SDXL + LayerDiffuse: the model, loaded once, and its LoRA switch."""

    def __init__(self, setup: RenderSetup):
        from ..model import LoraAdapters, load_model, resolve_device

        config = setup.config
        device = resolve_device(config.model.device, setup.local_rank)
        self.model = load_model(config.model, device, safety_checker=setup.safety_checker, sources=setup.sources,
                                encoder=setup.encoder, modes=setup.modes)  # fmt: skip
        self.switch = LoraSwitch(LoraAdapters(self.model.pipe), setup.run_loras)
        self.device, self.dtype, self.safety_checker = self.model.device, self.model.dtype, self.model.safety_checker
        self.device_name = device_name(self.device)
        self.weights = self.model.identity
        self.tta, self.sub_batch, self.log = config.run.tta, config.run.decoder_sub_batch, setup.log

    def render(self, batch: Batch) -> list[Outcome]:
        """A batch whose LoRA set cannot be used fails; a row whose input images cannot be used fails alone;
        a failed batch is retried row by row (one bad row, or a batch too large for the device's memory, must
        not fail its batch-mates)."""
        refused = self.switch.use(batch.loras)
        if refused:
            return [Failed(refused)] * len(batch.rows)
        problems = [problem(row, batch.inputs) for row in batch.rows]
        rows = [row for row, wrong in zip(batch.rows, problems, strict=True) if wrong is None]
        made = iter(self._render_rows(rows, batch) if rows else [])
        return [Failed(wrong) if wrong else next(made) for wrong in problems]

    def _render_rows(self, rows: list[Row], batch: Batch) -> list[Outcome]:
        outcomes = self._attempt(rows, batch.inputs)
        if len(rows) > 1 and isinstance(outcomes[0], Failed):
            self.log.event("batch_retry", outcomes[0].error, batch=batch.index, rows=len(rows))
            outcomes = [self._attempt([row], batch.inputs)[0] for row in rows]
        return outcomes

    def images(self, rows: Sequence[Row], inputs: Mapping | None = None):
        """uint8 images of rows that share a batch signature (run/kinds.py: RGBA [B, H, W, 4] for
        text-to-image); `inputs`: {column: uint8 [B, H, W, 4]} of rows with input images. A subclass that
        only serves text-to-image may override `images(rows)`: it is called so for rows without inputs."""
        from .kinds import render_images

        return render_images(self.model, rows, inputs or {}, self.tta, self.sub_batch)

    def _attempt(self, rows: Sequence[Row], files: Mapping[str, InputFile]) -> list[Outcome]:
        from ..model import free_memory

        try:
            inputs = load_images(list(rows), files) if rows[0].images() else {}
            images = self.images(rows, inputs) if rows[0].kind is not None else self.images(rows)
            return [Rendered(image) for image in images]
        except Exception as exc:  # e.g. out of memory: one bad batch must not end the run
            free_memory(self.model)
            return [Failed(f"{type(exc).__name__}: {exc}")] * len(rows)


class KeptRenderer:
    """A factory for a process that runs one shard after another (a Ray worker): the renderer made for the
    first shard is handed to the later ones, so the model loads once per worker, not once per shard. It is
    made again only for a shard that needs the safety checker, the encoder or a layer model it was made without."""

    def __init__(self, factory: RendererFactory):
        self.factory = factory
        self.renderer: Renderer | None = None

    def __call__(self, setup: RenderSetup) -> Renderer:
        if self.renderer is None or not _serves(self.renderer, setup):
            self.renderer = self.factory(setup)
        return self.renderer


def _serves(renderer: Renderer, setup: RenderSetup) -> bool:
    """Whether a renderer made earlier has what `setup` needs (a stand-in renderer has no model: it serves)."""
    if setup.safety_checker and renderer.safety_checker is None:
        return False
    model = getattr(renderer, "model", None)
    if model is None:
        return True
    has_encoder = getattr(model, "encoder", None) is not None
    return (has_encoder or not setup.encoder) and set(setup.modes) <= set(getattr(model, "conditional", {}))
