"""What tests and benchmarks need of the pipeline's data that the pipeline itself does not (small inputs)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.common.storage import Storage, write_atomic
from pipeline.folder.manifest import folder_state
from pipeline.folder.parts import record_from_part
from pipeline.input.rows import Row
from pipeline.input.table import Table
from pipeline.plan.batches import Batch, batch_positions
from pipeline.run.renderer import ModelRenderer, RendererFactory, RenderSetup
from pipeline.sprites.packer import AtlasInput, atlas_files, stale_files


def rows_of(table: Table) -> list[Row]:
    """Every valid row of a small table as a `Row` (runs make rows per batch)."""
    return [table.valid.row(i) for i in range(len(table.valid))]


def plan_batches(rows: Sequence[Row], batch_size: int) -> list[Batch]:
    """Batches of `Row` objects, by the rule runs use on positions."""
    positions = batch_positions([row.batch_signature for row in rows], batch_size)
    return [Batch(index, tuple(rows[p] for p in group)) for index, group in enumerate(positions)]


def latest_records(storage: Storage) -> dict[str, dict]:
    """{row key: its latest record, as in manifest.jsonl} (whole records: for small folders and tests)."""
    return {r["id"]: r for r in map(record_from_part, folder_state(storage).to_pylist())}


def pack_atlas(
    sprites: Sequence[AtlasInput],
    out_dir: Path,
    name: str = "atlas",
    max_size: int = 2048,
    padding: int = 2,
    trim: bool = False,
) -> list[Path]:
    """Pack, write `<name>-<n>.png` and `.json` per sheet into out_dir; returns the JSON paths.

    `padding`: transparent pixels between frames. `trim`: store each frame cropped to its pixels with
    alpha > 0 (spriteSourceSize says where they go back). Numbered files of an earlier, larger pack
    under the same name are removed.
    """
    files = atlas_files(sprites, name, max_size, padding, trim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        write_atomic(out_dir / file_name, data)
    for stale in stale_files([p.name for p in out_dir.iterdir()], name, len(files) // 2):
        (out_dir / stale).unlink(missing_ok=True)
    return [out_dir / n for n in files if n.endswith(".json")]


class HookedRenderer(ModelRenderer):
    """The real renderer, with `before(rows)` called ahead of every generation call: tests make it fail (as
    out of memory would), wait, or send a signal at a chosen batch."""

    def __init__(self, setup: RenderSetup, before: Callable[[Sequence[Row]], None]):
        super().__init__(setup)
        self.before = before

    def images(self, rows: Sequence[Row], inputs=None):
        self.before(rows)
        return super().images(rows, inputs)


def hooked(before: Callable[[Sequence[Row]], None]) -> RendererFactory:
    return functools.partial(HookedRenderer, before=before)
