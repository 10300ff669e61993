"""`layerdiffuse export`: each format loaded back with its real consumer library, pixel by pixel."""

from __future__ import annotations

import json
import os
import shutil
import string
import tarfile
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import fsspec
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli import cli
from pipeline.export import export
from pipeline.export.to_webdataset import sample_key
from pipeline.folder.schema import json_record
from pipeline.input.config import as_dict
from pipeline.model.safety import build_tiny_safety_checker

# 4 rows ok, 1 flagged by a checker that flags everything (the only row that asks for it), 1 invalid.
# Ids with dots (webdataset keys), `a.b` beside `a_b`, and a passthrough column that `datasets` would
# take for an image column if it kept its name.
TABLE = """id,prompt,category,source_file_name,enable_safety_checker,width
hero.v2,a knight with a glass sword,char,refs/hero.png,false,
a.b,"a potion bottle, glowing",prop,refs/potion.png,false,
a_b,a brass lamp,prop,refs/lamp.png,false,
flagged,a row the checker flags,char,refs/x.png,true,
x-1.2.3,a puff of smoke,fx,refs/smoke.png,false,
bad-width,a row with a bad width,char,refs/bad.png,false,100
"""
SHARD_SIZE = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config) -> Path:
    """A finished output folder made by the real `generate` command with the tiny model."""
    root = tmp_path_factory.mktemp("export-run")
    checker = build_tiny_safety_checker(root / "checker", flag_everything=True)
    config = replace(tiny_config, model=replace(tiny_config.model, safety_checker=str(checker)))
    config = replace(config, run=replace(config.run, batch_size=4, tta=False))
    data = as_dict(config)
    data["run"] = {k: v for k, v in data["run"].items() if v is not None}
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    (root / "t.csv").write_text(TABLE)
    args = ["generate", str(root / "t.csv"), "--out", str(root / "out"), "--config", str(root / "config.yaml")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output  # the invalid row
    return root / "out"


@pytest.fixture
def memory_root():
    """A private folder on fsspec's in-memory filesystem (process-wide, so removed afterwards)."""
    url = f"memory://export-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def manifest(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]


def expected_rows(run_dir: Path, include_flagged: bool) -> list[dict]:
    rows = [r for r in manifest(run_dir) if r["status"] == "ok"]
    assert {r["id"] for r in rows if r["has_nsfw_concepts"]} == {"flagged"}
    return [r for r in rows if include_flagged or not r["has_nsfw_concepts"]]


def source_pixels(run_dir: Path, record: dict) -> np.ndarray:
    with Image.open(run_dir / record["image"]["url"]) as image:
        assert image.mode == "RGBA"
        return np.asarray(image)


def exported(run_dir: Path, tmp_path: Path, fmt: str, where: str, memory_root: str, include_flagged: bool) -> Path:
    """Export through the command line to a local folder; or through the API from and to memory://,
    then checked byte-identical to the local export and copied to disk for the consumer library."""
    flags = ["--include-flagged"] if include_flagged else []
    local = tmp_path / f"{fmt}-local"
    args = ["export", str(run_dir), "--format", fmt, "--to", str(local), "--shard-size", str(SHARD_SIZE), *flags]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"exported {len(expected_rows(run_dir, include_flagged))} rows as {fmt}" in result.output
    if where == "local":
        return local
    fs = fsspec.filesystem("memory")
    fs.put(str(run_dir), f"{memory_root}/run", recursive=True)
    export(f"{memory_root}/run", f"{memory_root}/export", fmt, SHARD_SIZE, include_flagged)
    copy = tmp_path / f"{fmt}-memory"
    for path in fs.find(f"{memory_root}/export"):
        target = copy / path.split("/export/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))
    assert files(copy) == files(local)
    assert {p: (copy / p).read_bytes() for p in files(copy) - {"export.json"}} == {
        p: (local / p).read_bytes() for p in files(local) - {"export.json"}
    }
    return copy


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def index(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


def shard_rows(count: int) -> list[int]:
    return [min(SHARD_SIZE, count - start) for start in range(0, count, SHARD_SIZE)]


WHERE = pytest.mark.parametrize(("where", "include_flagged"), [("local", False), ("memory", True)])


@WHERE
def test_webdataset_shards_load_with_webdataset(run_dir, tmp_path, memory_root, where, include_flagged):
    import webdataset as wds

    folder = exported(run_dir, tmp_path, "webdataset", where, memory_root, include_flagged)
    rows = expected_rows(run_dir, include_flagged)
    shards = sorted(folder.glob("data-*.tar"))
    assert [p.name for p in shards] == [f"data-{i:06d}.tar" for i in range(len(shard_rows(len(rows))))]
    assert [f["rows"] for f in index(folder)["files"]] == shard_rows(len(rows))
    assert index(folder)["skipped"] == ({"invalid": 1} if include_flagged else {"invalid": 1, "flagged": 1})
    members = {name: data for shard in shards for name, data in tar_members(shard).items()}
    assert sorted(members) == sorted(f"{sample_key(r['id'])}.{ext}" for r in rows for ext in ("json", "png"))
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pilrgba"))
    assert [s["json"]["id"] for s in samples] == [r["id"] for r in rows]
    for sample, record in zip(samples, rows, strict=True):
        assert "." not in sample["__key__"] and unquote(sample["__key__"]) == record["id"]
        assert sample["json"] == record  # the whole manifest record
        assert sample["png"].mode == "RGBA"
        assert np.array_equal(np.asarray(sample["png"]), source_pixels(run_dir, record))
        assert members[sample["__key__"] + ".png"] == (run_dir / record["image"]["url"]).read_bytes()


@WHERE
def test_imagefolder_loads_with_datasets(run_dir, tmp_path, memory_root, where, include_flagged):
    import datasets

    folder = exported(run_dir, tmp_path, "imagefolder", where, memory_root, include_flagged)
    rows = expected_rows(run_dir, include_flagged)
    counts = shard_rows(len(rows))
    assert [len(list((folder / f"{i:06d}").iterdir())) for i in range(len(counts))] == counts
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["export.json", "metadata.jsonl"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded.features["seed"] == datasets.Value("int64")
    assert [r["id"] for r in loaded] == [r["id"] for r in rows]
    for item, record in zip(loaded, rows, strict=True):
        assert item["text"] == item["prompt"] == record["prompt"]
        assert (item["seed"], item["category"], item["has_nsfw_concepts"]) == (
            record["seed"], record["category"], record["has_nsfw_concepts"])  # fmt: skip
        assert item["source_file_name_"] == record["source_file_name"]  # renamed: not an image column
        assert item["model_base"] == record["model"]["base"]
        assert item["environment_torch"] == record["environment"]["torch"]
        assert item["image"].mode == "RGBA"
        assert np.array_equal(np.asarray(item["image"]), source_pixels(run_dir, record))


@WHERE
def test_parquet_loads_with_datasets_as_image_feature(run_dir, tmp_path, memory_root, where, include_flagged):
    import datasets
    import pyarrow.parquet as pq

    folder = exported(run_dir, tmp_path, "parquet", where, memory_root, include_flagged)
    rows = expected_rows(run_dir, include_flagged)
    shards = sorted(folder.glob("data-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == shard_rows(len(rows))
    loaded = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train",
                                   cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert isinstance(loaded.features["image"], datasets.Image)
    assert [r["id"] for r in loaded] == [r["id"] for r in rows]
    for item, record in zip(loaded, rows, strict=True):
        expected = {k: v for k, v in record.items() if k != "image"}
        assert json_record({k: item[k] for k in expected}) == expected  # every manifest column, nested ones too
        assert item["image"].mode == "RGBA"
        assert np.array_equal(np.asarray(item["image"]), source_pixels(run_dir, record))
    raw = loaded.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["path"] == f"{rows[0]['id']}.png"
    assert raw["bytes"] == (run_dir / rows[0]["image"]["url"]).read_bytes()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_damaged_image_stops_the_export_before_its_shard_appears(run_dir, tmp_path, memory_root, where):
    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    victim = next(r for r in manifest(run_dir) if r["id"] == "x-1.2.3")
    path = damaged / victim["image"]["url"]
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    dest = str(tmp_path / "wds") if where == "local" else f"{memory_root}/wds"
    args = ["export", str(damaged), "--format", "webdataset", "--to", dest, "--shard-size", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{victim['image']['url']} (manifest row {victim['row']}, id x-1.2.3)" in result.output
    assert "does not match the sha256" in result.output and "layerdiffuse generate" in result.output
    # hero.v2, a.b in shard 0 (complete); a_b, x-1.2.3 in shard 1: never published, no temporary left
    fs, root = fsspec.core.url_to_fs(dest)
    assert [p.rsplit("/", 1)[1] for p in fs.find(root)] == ["data-000000.tar"]
    local = tmp_path / "first.tar"
    local.write_bytes(fs.cat_file(f"{root}/data-000000.tar"))
    assert sorted(tar_members(local)) == ["a%2Eb.json", "a%2Eb.png", "hero%2Ev2.json", "hero%2Ev2.png"]


def test_an_unwritable_dest_is_named_with_exit_code_6(run_dir, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    dest = tmp_path / "a-file" / "export"
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "parquet", "--to", str(dest)])
    assert result.exit_code == 6
    assert f"--to {dest}: cannot be used" in result.output


def test_dest_must_be_empty_unless_overwrite(run_dir, tmp_path):
    dest = tmp_path / "pq"
    dest.mkdir()
    (dest / "old-shard.parquet").write_bytes(b"stale")
    args = ["export", str(run_dir), "--format", "parquet", "--to", str(dest)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "not empty" in result.output and "--overwrite" in result.output
    assert os.listdir(dest) == ["old-shard.parquet"]
    result = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(dest)) == ["data-000000.parquet", "export.json"]
    assert index(dest)["rows"] == 4 and index(dest)["files"][0]["rows"] == 4


def test_a_folder_without_manifest_is_named(tmp_path):
    (tmp_path / "half" / "images").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "half"), "--format", "parquet", "--to", "memory://x"])
    assert result.exit_code == 2
    assert "no manifest.parquet" in result.output and "layerdiffuse merge" in result.output
    result = CliRunner().invoke(cli, ["export", "nosuchproto://x", "--format", "parquet", "--to", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'DIR': nosuchproto://x: not a storage location fsspec knows" in result.output


@given(st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=40))
def test_sample_keys_have_no_dots_and_give_the_id_back(row_id):
    key = sample_key(row_id)
    assert "." not in key and "/" not in key
    assert unquote(key) == row_id
    assert sample_key(row_id.replace(".", "_")) != key or "." not in row_id
