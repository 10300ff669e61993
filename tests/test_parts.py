"""Part logs at scale: read back a block at a time, each process's context kept once in the checkpoint."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common.storage import Storage
from pipeline.folder import parts
from pipeline.folder.contexts import Contexts
from pipeline.folder.layout import CHECKPOINT, PARTS
from pipeline.folder.manifest import folder_state, merge, write_keys
from pipeline.folder.parts import PartWriter, read_new

MODEL = {"base": "models/sdxl", "injection": "attn", "scheduler": "euler", "dtype": "float16"}


def write_log(storage: Storage, stem: str, records: list[dict], rank: int, host: str) -> None:
    with PartWriter(storage, stem) as part:
        part.set_context(MODEL, {"host": host, "world_size": 2}, rank)
        for record in records:
            part.append(record)


def test_logs_read_a_block_at_a_time_match_one_read_and_leave_a_cut_line(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    rows = [{"id": f"r{i}", "row": i + 1, "status": "ok", "prompt": "ü" * (i * 37 % 500)} for i in range(200)]
    stem = "20260101T000000000000Z-rank00000-of-00001"
    write_log(storage, stem, rows, 0, "a")
    log = tmp_path / PARTS / f"{stem}.jsonl"
    cut = b'{"id": "late", "row": 201'  # a crash in the middle of a line
    with log.open("ab") as handle:
        handle.write(cut)
    whole, offsets = read_new(storage, {}, contexts=Contexts())
    monkeypatch.setattr(parts, "BLOCK", 100)  # shorter than most lines
    blocks, block_offsets = read_new(storage, {}, contexts=Contexts())
    assert blocks.equals(whole) and block_offsets == offsets
    assert blocks.column("id").to_pylist() == [r["id"] for r in rows]
    assert offsets[log.name] == log.stat().st_size - len(cut)
    with log.open("ab") as handle:  # the line completed: the next read gets it, and only it
        handle.write(b', "status": "ok", "prompt": "x"}\n')
    late, _ = read_new(storage, offsets, contexts=Contexts())
    assert late.column("id").to_pylist() == ["late"] and late.column("prompt").to_pylist() == ["x"]


def test_checkpoint_keeps_each_context_once_and_gives_the_logs_records(tmp_path):
    storage = Storage(tmp_path)
    first = [{"id": f"a{i}", "row": i + 1, "status": "ok", "seed": i} for i in range(50)]
    first.append({"id": "bad", "row": 51, "status": "invalid", "error": "width must be a multiple of 64"})
    second = [{"id": f"b{i}", "row": 52 + i, "status": "ok", "seed": i} for i in range(50)]
    write_log(storage, "20260101T000000000000Z-rank00000-of-00002", first, 0, "a")
    write_log(storage, "20260101T000000000000Z-rank00001-of-00002", second, 1, "b")
    keys = [r["id"] for r in first + second]
    write_keys(storage, keys, [])
    from_logs = folder_state(storage).sort_by("id")
    merged = merge(storage)
    assert (merged.rows, merged.unfinished, merged.rewritten) == (len(keys), 1, True)
    again = merge(storage)  # nothing new: the checkpoint's ids and statuses say so
    assert (again.rows, again.unfinished, again.rewritten) == (len(keys), 1, False)

    checkpoint = pq.read_table(tmp_path / CHECKPOINT)
    assert "model" not in checkpoint.column_names and checkpoint.column("context").type == pa.int32()
    contexts = json.loads(checkpoint.schema.metadata[b"layerdiffuse.contexts"])
    assert [(c["rank"], c["environment"]["host"]) for c in contexts] == [(0, "a"), (1, "b")]
    from_checkpoint = folder_state(storage).sort_by("id")
    assert from_checkpoint.equals(from_logs)
    by_id = {r["id"]: r for r in from_checkpoint.select(["id", "rank", "model", "environment"]).to_pylist()}
    assert by_id["a3"]["rank"] == 0 and by_id["b3"]["rank"] == 1 and by_id["b3"]["environment"]["host"] == "b"
    assert by_id["a3"]["model"]["base"] == MODEL["base"] and by_id["bad"]["model"] is None  # met no model
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == keys and lines[60]["environment"]["host"] == "b"

    # A rerun of rank 0 in the same environment adds a log, not a context.
    write_log(storage, "20260102T000000000000Z-rank00000-of-00001", [{**first[0], "seed": 99}], 0, "a")
    assert merge(storage).rows == len(keys)
    checkpoint = pq.read_table(tmp_path / CHECKPOINT)
    assert len(json.loads(checkpoint.schema.metadata[b"layerdiffuse.contexts"])) == 2
    assert json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])["seed"] == 99


def test_a_checkpoint_with_every_context_written_out_is_set_aside(tmp_path):
    """The previous checkpoint form (context fields on every row) is not trusted: the logs are read again."""
    storage = Storage(tmp_path)
    rows = [{"id": f"r{i}", "row": i + 1, "status": "ok"} for i in range(5)]
    write_log(storage, "20260101T000000000000Z-rank00000-of-00001", rows, 0, "a")
    write_keys(storage, [r["id"] for r in rows], [])
    merge(storage)
    checkpoint = pq.read_table(tmp_path / CHECKPOINT)
    contexts = Contexts(json.loads(checkpoint.schema.metadata[b"layerdiffuse.contexts"]))
    consumed = {b"layerdiffuse.consumed": checkpoint.schema.metadata[b"layerdiffuse.consumed"]}
    earlier = contexts.attach(checkpoint.replace_schema_metadata(None)).slice(0, 2)  # and missing three rows
    pq.write_table(earlier.replace_schema_metadata(consumed), tmp_path / CHECKPOINT)
    assert sorted(folder_state(storage, ["id"]).column("id").to_pylist()) == [r["id"] for r in rows]
    assert folder_state(storage).column("rank").to_pylist() == [0] * 5
