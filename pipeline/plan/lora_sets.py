"""Each row's LoRA set, decided when the run plans (no torch): the run's LoRAs (`--lora`, `model.loras`)
plus the row's own `loras` cell, every distinct file found, checked and hashed once.

How they combine: a row's LoRAs add to the run's; a file in both takes the row's weight (so `x:0` in a row
turns the run's `x` off for that row). A run LoRA that cannot be used stops the run before any row
(`LoraError`, exit 4); a row's own that cannot be used fails only the rows that name it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..input.lora_refs import LoraRef
from ..model.lora_files import LoraError, ResolvedLora, lora_set_key, resolve_lora


@dataclass(frozen=True)
class LoraSet:
    """The LoRAs a row runs with: the run's and its own, found and hashed, or why they cannot be used
    (`error`: its rows fail with it). `key`: their identity for the request hash ("" for none)."""

    loras: tuple[ResolvedLora, ...] = ()
    error: str | None = None
    key: str = ""


NO_LORAS = LoraSet()


@dataclass(frozen=True)
class RowLoraSets:
    """The LoRA set of every valid row (by position), sharing one `LoraSet` per distinct `loras` cell."""

    run: LoraSet
    sets: tuple[LoraSet, ...] = ()  # one per distinct cell
    index: list[int] | None = None  # per row position, its set in `sets`; None: every row has the run's

    def of(self, position: int) -> LoraSet:
        return self.run if self.index is None else self.sets[self.index[position]]

    def hash_keys(self, positions: Sequence[int]) -> list[str] | None:
        """Per row, its set's key for the request hash; None when no row has a LoRA (nothing to add)."""
        if self.index is None:
            return [self.run.key] * len(positions) if self.run.key else None
        keys = [s.key for s in self.sets]
        return [keys[self.index[p]] for p in positions]


def plan_lora_sets(run_specs: Sequence[str], cells: list[tuple] | None) -> RowLoraSets:
    """`run_specs`: the run's `PATH_OR_HUB_ID[:WEIGHT]` texts; `cells`: the table's `loras` column (LoraRef
    tuples; None without the column). Raises `LoraError` for a run LoRA that cannot be used."""
    resolver = _Resolver()
    try:
        run = tuple(resolver(LoraRef.parse(spec)) for spec in run_specs)
    except LoraError as exc:
        raise LoraError(f"--lora (model.loras): {exc}") from None
    run_set = lora_set(run)
    if cells is None:
        return RowLoraSets(run_set)
    ids: dict[tuple, int] = {(): 0}
    sets, index = [run_set], []
    for cell in cells:
        found = ids.get(cell)
        if found is None:
            found = ids[cell] = len(sets)
            sets.append(_row_set(run, cell, resolver))
        index.append(found)
    return RowLoraSets(run_set, tuple(sets), index)


def lora_set(loras: Sequence[ResolvedLora]) -> LoraSet:
    """A usable set; its key is order-independent and keeps weight 0 (`x:0` is another request than none)."""
    if not loras:
        return NO_LORAS
    return LoraSet(tuple(loras), key=json.dumps(lora_set_key(loras)))


def combine(run: Sequence[ResolvedLora], own: Sequence[ResolvedLora]) -> tuple[ResolvedLora, ...]:
    """The run's LoRAs, less the files the row names itself, then the row's."""
    files = {lora.sha256 for lora in own}
    return (*(lora for lora in run if lora.sha256 not in files), *own)


def _row_set(run: tuple[ResolvedLora, ...], cell: tuple[LoraRef, ...], resolver: _Resolver) -> LoraSet:
    try:
        own = tuple(resolver(ref) for ref in cell)
    except LoraError as exc:
        asked = "; ".join(map(str, cell))
        return LoraSet(error=f"LoraError: column 'loras' ({asked}): {exc}", key=f"error: {asked}")
    return lora_set(combine(run, own))


class _Resolver:
    """Each distinct file is found, checked and hashed once, whatever weights it is asked at."""

    def __init__(self):
        self._found: dict[str, ResolvedLora | LoraError] = {}

    def __call__(self, ref: LoraRef) -> ResolvedLora:
        if ref.source not in self._found:
            try:
                self._found[ref.source] = resolve_lora(LoraRef(ref.source))
            except LoraError as exc:
                self._found[ref.source] = exc
        found = self._found[ref.source]
        if isinstance(found, LoraError):
            raise LoraError(str(found))
        return replace(found, ref=ref)


class LoraSwitch:
    """Before every batch its LoRA set becomes the active one (no LoRA too: such a batch runs on the weights
    as loaded). A set that does not fit the model fails its batches, is remembered, and is not loaded again."""

    def __init__(self, adapters, run: LoraSet):
        """`adapters`: the pipeline's `model.lora.LoraAdapters`. The run's own LoRAs are loaded at once:
        one that does not fit stops the run before any row (`LoraError`, exit 4)."""
        self.adapters = adapters
        self._refused: dict[str, str] = {}
        for lora in run.loras:
            try:
                adapters.load(lora)
            except LoraError as exc:
                raise LoraError(f"--lora (model.loras): {exc}") from None

    def use(self, loras: LoraSet) -> str | None:
        """Activate `loras`; None when they are active, else why this batch's rows fail."""
        if loras.error:
            return loras.error
        if loras.key not in self._refused:
            try:
                self.adapters.activate(loras.loras)
            except LoraError as exc:
                self._refused[loras.key] = f"LoraError: {exc}"
        return self._refused.get(loras.key)
