"""LoRAs on top of the LayerDiffuse-patched SDXL, switched per batch.

Both common formats load through diffusers' `load_lora_weights` (PEFT backend) as named adapters:
kohya / AUTOMATIC1111 (`lora_unet_*`, `lora_te1_*`, `lora_te2_*` with `lora_down` / `lora_up` / `alpha`)
and diffusers / PEFT (`unet.*.lora_A` / `lora_B`, `text_encoder*.…`). Adapters are never fused: the
weights as loaded (SDXL with LayerDiffuse merged in) stay bit-for-bit untouched, and each LoRA adds its
own low-rank term on top, so switching sets is `set_adapters` / `disable_lora`, and going back to no
LoRA gives exactly the original pixels (docs/models.md: the order of patches and why).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Sequence

from ..input.lora_refs import LoraRef, LoraSpecError, parse_lora_list
from .lora_files import LoraError, LoraFileInfo, ResolvedLora, inspect_lora, lora_set_key, resolve_lora

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

__all__ = ["LoraAdapters", "LoraError", "LoraFileInfo", "LoraRef", "LoraSpecError", "ResolvedLora",
           "count_adapter_layers", "inspect_lora", "lora_set_key", "parse_lora_list", "resolve_lora"]  # fmt: skip


class LoraAdapters:
    """The LoRAs loaded into one pipeline, as named PEFT adapters keyed by content (sha256).

    `activate(loras)` before a batch makes exactly that set active, with its weights; a LoRA seen before
    costs no loading. At most `max_loaded` adapters stay loaded; the least recently used go first.
    """

    def __init__(self, pipe, max_loaded: int = 16):
        self.pipe = pipe
        self.max_loaded = max_loaded
        self._names: OrderedDict[str, str] = OrderedDict()  # sha256 -> adapter name, oldest first
        self.active: tuple[tuple[str, float], ...] = ()  # (adapter name, weight) now in effect
        self._changed = False  # loading an adapter makes it active: the next activate() must reset

    def activate(self, loras: Sequence[ResolvedLora]) -> None:
        """Make `loras` the active set. Weight 0 still loads (so checks) the file but adds nothing."""
        keep = {lora.sha256 for lora in loras}
        weights: dict[str, float] = {}
        for lora in loras:  # the same file twice adds up: a LoRA's term is linear in its weight
            name = self.load(lora, keep)
            weights[name] = weights.get(name, 0.0) + lora.weight
        # sorted: a set, whatever order it was written in, sums its terms in one order (the same low bits)
        active = tuple(sorted((name, weight) for name, weight in weights.items() if weight != 0))
        if active == self.active and not self._changed:
            return
        if active:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in active], adapter_weights=[w for _, w in active])
        elif self._names:  # with none loaded (a first load failed and was undone) nothing is active
            self.pipe.disable_lora()
        self.active, self._changed = active, False

    def load(self, lora: ResolvedLora, keep: set[str] = frozenset()) -> str:
        """The adapter's name, loading it first if needed; `LoraError` if it does not fit this SDXL model."""
        if lora.sha256 in self._names:
            self._names.move_to_end(lora.sha256)
            return self._names[lora.sha256]
        self._evict(keep)
        name = f"lora_{lora.sha256[:16]}"
        self._changed = True
        load_adapter(self.pipe, lora, name)
        self._names[lora.sha256] = name
        return name

    def _evict(self, keep: set[str]) -> None:
        spare = [sha for sha in self._names if sha not in keep]
        for sha in spare[: max(0, len(self._names) + 1 - self.max_loaded)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT notes that the active adapter changed: activate() resets it
                self.pipe.delete_adapters([self._names.pop(sha)])
            self._changed = True


def load_adapter(pipe, lora: ResolvedLora, name: str) -> None:
    """Load one LoRA as adapter `name`; every layer in the file must land on a layer of the model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns on every adapter after the first
            # The file itself, not its tensors: diffusers reads the rank and alpha a diffusers / PEFT LoRA keeps
            # only in its safetensors metadata (`lora_adapter_metadata`); without them it would apply scale 1.
            pipe.load_lora_weights(lora.path, adapter_name=name, use_safetensors=True)
    except Exception as exc:  # diffusers / PEFT: unplaceable names, size mismatches, unknown layouts
        _forget(pipe, name)
        raise LoraError(f"LoRA {lora.path} ({lora.info.found}) does not fit this SDXL model: {_brief(exc)}") from exc
    placed = sum(count_adapter_layers(getattr(pipe, c), name) for c in COMPONENTS)
    if placed < lora.info.modules:
        _forget(pipe, name)
        raise LoraError(
            f"LoRA {lora.path} ({lora.info.found}): only {placed} of its {lora.info.modules} layers match layers "
            "of this SDXL model's UNet and text encoders, so it was made for another architecture; use an SDXL LoRA"
        )


def count_adapter_layers(module, adapter_name: str) -> int:
    """How many layers of `module` carry the adapter `adapter_name`."""
    return sum(1 for m in module.modules() if adapter_name in (getattr(m, "lora_A", None) or {}))


def _forget(pipe, name: str) -> None:
    with contextlib.suppress(Exception), warnings.catch_warnings():  # nothing, or only part, was loaded
        warnings.simplefilter("ignore")  # PEFT notes the active adapter changed: the next activate() resets it
        pipe.delete_adapters([name])


def _brief(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"
