"""Users' own models through `generate` on the tiny model: LoRAs from the flag and the `loras` column, their
identity in the request hash, per-row and run-wide refusals, single-file checkpoints, and the provenance in
the manifest and the PNG text."""

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.input.config import ConfigError, load_config
from pipeline.input.table import load_table
from pipeline.model.testing.tiny import SINGLE_FILE
from pipeline.model.testing.tiny_lora import build_tiny_lora
from tests.helpers import rows_of
from tests.model.files import KOHYA_LORA, SD1, write_tensors

ROWS = "id,prompt,seed\nsword,a pixel-art sword,1\nshield,a round shield,2\n"


@pytest.fixture(scope="module")
def loras(tiny_model, tmp_path_factory):
    """LoRAs for the tiny model (two formats), and files that look like LoRAs but cannot be used."""
    folder = tmp_path_factory.mktemp("loras")
    style = build_tiny_lora(tiny_model.pipe, folder / "tiny_lora.safetensors", "kohya", seed=1)
    cut = folder / "cut.safetensors"
    cut.write_bytes(style.read_bytes()[:3000])
    sd15 = write_tensors(
        folder / "sd15.safetensors",
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
         "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4)},
    )  # fmt: skip
    wide = write_tensors(folder / "wide.safetensors", {k: (v[0] * 2, v[1] * 2) for k, v in KOHYA_LORA.items()})
    return {"style": style, "cut": cut, "sd15": sd15, "wide": wide, "missing": folder / "nowhere.safetensors",
            "icons": build_tiny_lora(tiny_model.pipe, folder / "icons.safetensors", "peft", seed=2)}  # fmt: skip


def generate(table, out, config, *args):
    argv = ["generate", str(table), "--out", str(out), "--config", str(config), "--log-format", "json", "--no-tta",
            *map(str, args)]  # fmt: skip
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result, events


def summary(events) -> dict:
    return next(e for e in events if e["event"] == "summary")


def error(events) -> str:
    return next(e for e in events if e["event"] == "error")["message"]


def records(out) -> dict:
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def pixels(out, key) -> np.ndarray:
    with Image.open(out / "images" / "00000" / f"{key}.png") as image:
        return np.asarray(image)


def pngs(out) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "images").rglob("*.png")}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_hash(path) -> str:
    """AUTOMATIC1111's LoRA hash, computed here from the format: SHA-256 of the bytes after the header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + struct.unpack("<Q", data[:8])[0] :]).hexdigest()[:12]


@pytest.fixture(scope="module")
def flag_runs(tmp_path_factory, tiny_config_file, loras):
    """The same table without a LoRA, with `--lora tiny_lora:0` and with `:1` (one row per batch)."""
    folder = tmp_path_factory.mktemp("flag-runs")
    table = folder / "t.csv"
    table.write_text(ROWS)
    runs = {}
    for name, extra in (("none", []), ("zero", ["--lora", f"{loras['style']}:0"]), ("one", ["--lora", loras["style"]])):
        result, _ = generate(table, folder / name, tiny_config_file, "--batch-size", "1", *extra)
        assert result.exit_code == 0, result.output
        runs[name] = folder / name
    return table, runs


def test_weight_zero_gives_the_pixels_of_no_lora_and_weight_one_does_not(flag_runs, loras):
    _, runs = flag_runs
    for key in ("sword", "shield"):
        assert pixels(runs["zero"], key).tobytes() == pixels(runs["none"], key).tobytes()
        assert np.abs(pixels(runs["one"], key).astype(int) - pixels(runs["none"], key)).max() > 10
        hashes = {name: records(out)[key]["request_hash"] for name, out in runs.items()}
        assert len(set(hashes.values())) == 3, hashes  # weight 0 is another request than no LoRA
    style = loras["style"]
    assert records(runs["none"])["sword"]["loras"] == []
    assert records(runs["zero"])["sword"]["loras"] == [
        {"name": "tiny_lora", "source": str(style), "weight": 0.0, "sha256": sha256(style),
         "a1111_hash": tensor_hash(style)}
    ]  # fmt: skip


def test_a_rerun_with_the_same_lora_skips_every_row_even_from_another_place(flag_runs, tiny_config_file, loras,
                                                                             tmp_path):  # fmt: skip
    table, runs = flag_runs
    out = shutil.copytree(runs["one"], tmp_path / "out")
    before = pngs(out)
    moved = shutil.copy(loras["style"], tmp_path / "renamed.safetensors")
    result, events = generate(table, out, tiny_config_file, "--lora", f"{moved}:1.0")
    assert result.exit_code == 0, result.output
    assert (summary(events)["ok"], summary(events)["skipped"]) == (0, 2)
    assert "model_loaded" not in {e["event"] for e in events}
    assert pngs(out) == before


def test_a_single_file_checkpoint_gives_the_pixels_of_the_diffusers_folder(flag_runs, tiny_config_file,
                                                                            tiny_model_dir, tmp_path):  # fmt: skip
    table, runs = flag_runs
    checkpoint = tiny_model_dir / SINGLE_FILE
    args = ["--model", checkpoint, "--base-config", tiny_model_dir / "sdxl", "--batch-size", "1"]
    result, _ = generate(table, tmp_path / "out", tiny_config_file, *args)
    assert result.exit_code == 0, result.output
    for key in ("sword", "shield"):
        assert pixels(tmp_path / "out", key).tobytes() == pixels(runs["none"], key).tobytes()
    model = records(tmp_path / "out")["sword"]["model"]
    digest = sha256(checkpoint)
    assert (model["base_sha256"], model["model_hash"]) == (digest, digest[:10])
    assert model["base_config"] == str(tiny_model_dir / "sdxl")
    assert records(runs["none"])["sword"]["model"]["model_hash"] is None  # a folder has no A1111 hash
    with Image.open(tmp_path / "out" / "images" / "00000" / "sword.png") as image:
        assert f"Model hash: {digest[:10]}, Model: sdxl-tiny, " in image.text["parameters"]


@pytest.mark.parametrize(
    ("shapes", "found"),
    [(SD1, "is a Stable Diffusion 1.x checkpoint"), (KOHYA_LORA, "is a LoRA (a patch for a model, not a model)")],
)
def test_a_checkpoint_that_is_not_sdxl_stops_the_run_before_any_row(shapes, found, tiny_config_file, tmp_path):
    (tmp_path / "t.csv").write_text(ROWS)
    model = write_tensors(tmp_path / "model.safetensors", shapes)
    result, events = generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file, "--model", model)
    assert result.exit_code == 4, result.output
    assert error(events).startswith(f"{model} {found}") and "; needed: an SDXL checkpoint" in error(events)
    assert not list((tmp_path / "out").rglob("*.png")) and not list((tmp_path / "out").rglob("*.jsonl"))


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such file"), ("cut", "truncated"), ("sd15", "a LoRA for Stable Diffusion 1.x/2.x"),
     ("wide", "does not fit this SDXL model")],
)  # fmt: skip
def test_a_run_lora_that_cannot_be_used_stops_the_run_before_any_row(name, message, loras, tiny_config_file,
                                                                      tmp_path):  # fmt: skip
    (tmp_path / "t.csv").write_text(ROWS)
    result, events = generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file, "--lora", f"{loras[name]}:0.7")
    assert result.exit_code == 4, result.output
    assert error(events).startswith("--lora (model.loras): ") and str(loras[name]) in error(events)
    assert message in error(events)
    assert not list((tmp_path / "out").rglob("*.png")) and not list((tmp_path / "out").rglob("*.jsonl"))


def test_a_lora_flag_that_does_not_read_is_a_usage_error(tiny_config_file, tmp_path):
    (tmp_path / "t.csv").write_text(ROWS)
    result, _ = generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file, "--lora", ":0.5")
    assert result.exit_code == 2 and "no file or hub id" in result.output
    assert not (tmp_path / "out").exists()


def test_row_loras_that_cannot_be_used_fail_only_their_rows(loras, tiny_config_file, tmp_path):
    cells = {"plain": "", "styled": f"{loras['style']}:1", "styled-too": f" {loras['style']}:1 ",
             "missing": loras["missing"], "cut": loras["cut"], "sd15": loras["sd15"], "wide": f"{loras['wide']}:0.5",
             "bad-cell": "x.safetensors:1e999"}  # fmt: skip
    table = tmp_path / "t.csv"
    table.write_text("id,prompt,seed,loras\n" + "".join(f'{k},a pixel-art sword,1,"{v}"\n' for k, v in cells.items()))
    result, _ = generate(table, tmp_path / "out", tiny_config_file)
    assert result.exit_code == 3, result.output
    got = records(tmp_path / "out")
    assert {k: r["status"] for k, r in got.items()} == {
        "plain": "ok", "styled": "ok", "styled-too": "ok", "missing": "failed", "cut": "failed", "sd15": "failed",
        "wide": "failed", "bad-cell": "invalid"}  # fmt: skip
    for key, fragment in (("missing", "no such file"), ("cut", "truncated"), ("sd15", "Stable Diffusion 1.x/2.x"),
                          ("wide", "does not fit this SDXL model")):  # fmt: skip
        message = got[key]["error"]
        assert message.startswith("LoraError: ") and str(loras[key]) in message and fragment in message, message
    assert f"{table}: row 8, column 'loras': value 'x.safetensors:1e999'" in got["bad-cell"]["error"]
    assert sorted(pngs(tmp_path / "out")) == ["plain.png", "styled-too.png", "styled.png"]
    # one batch per LoRA set; the same set batches together; the LoRA changes the pixels
    assert got["styled"]["batch_index"] == got["styled-too"]["batch_index"] != got["plain"]["batch_index"]
    assert np.abs(pixels(tmp_path / "out", "styled").astype(int) - pixels(tmp_path / "out", "plain")).max() > 10
    assert got["styled"]["loras"][0]["sha256"] == sha256(loras["style"])
    # when only rows with LoRAs that cannot be found are left to do, they fail again without loading the model
    table.write_text(f"id,prompt,seed,loras\nplain,a pixel-art sword,1,\nmissing,a cup,1,{loras['missing']}\n")
    result, events = generate(table, tmp_path / "out", tiny_config_file)
    assert result.exit_code == 3 and "model_loaded" not in {e["event"] for e in events}
    assert (summary(events)["skipped"], summary(events)["failed"]) == (1, 1)
    assert "no such file" in records(tmp_path / "out")["missing"]["error"]


def test_a_row_set_adds_to_the_run_set_and_overrides_the_same_file(flag_runs, loras, tiny_config_file, tmp_path):
    """With `--lora tiny_lora:1`: a row without a cell has the run's set; `tiny_lora:0` in a row replaces it (the
    pixels and request of `--lora tiny_lora:0`); another LoRA in a row adds to it."""
    table, runs = flag_runs
    cells = {"sword": "", "shield": f"{loras['style']}:0", "cup": f"{loras['icons']}:0.5"}
    rows = [line.split(",") for line in ROWS.splitlines()[1:]] + [["cup", "a cup", "3"]]
    (tmp_path / "t.csv").write_text("id,prompt,seed,loras\n" + "".join(f"{k},{p},{s},{cells[k]}\n" for k, p, s in rows))
    result, _ = generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file, "--lora", loras["style"],
                         "--batch-size", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    got, one, zero = records(tmp_path / "out"), records(runs["one"]), records(runs["zero"])
    assert got["sword"]["request_hash"] == one["sword"]["request_hash"]
    assert pixels(tmp_path / "out", "sword").tobytes() == pixels(runs["one"], "sword").tobytes()
    assert got["shield"]["request_hash"] == zero["shield"]["request_hash"]
    assert pixels(tmp_path / "out", "shield").tobytes() == pixels(runs["none"], "shield").tobytes()
    assert [(lora["name"], lora["weight"]) for lora in got["cup"]["loras"]] == [("tiny_lora", 1.0), ("icons", 0.5)]


def test_changing_a_lora_redoes_only_the_rows_it_touches(loras, tiny_model, tiny_config_file, tmp_path):
    icons = shutil.copy(loras["icons"], tmp_path / "icons.safetensors")
    table = tmp_path / "t.csv"
    table.write_text(f"id,prompt,seed,loras\nplain,a cup,1,\nstyled,a cup,1,{icons}:1\n")
    assert generate(table, tmp_path / "out", tiny_config_file)[0].exit_code == 0
    before = pngs(tmp_path / "out")
    build_tiny_lora(tiny_model.pipe, icons, "peft", seed=3)  # the same file name, other weights
    result, events = generate(table, tmp_path / "out", tiny_config_file)
    assert result.exit_code == 0, result.output
    assert (summary(events)["ok"], summary(events)["skipped"]) == (1, 1)
    after = pngs(tmp_path / "out")
    assert after["plain.png"] == before["plain.png"] and after["styled.png"] != before["styled.png"]
    assert records(tmp_path / "out")["styled"]["loras"][0]["sha256"] == sha256(icons)


def test_loras_cells_from_text_lists_and_nulls(tmp_path):
    """CSV text, JSON Lines lists and nulls; empty cells take the fast path, which agrees with the full rule."""
    from pipeline.input.cells import column_rules, parse_column
    from pipeline.input.config import Defaults
    from pipeline.input.lora_refs import LoraRef

    lines = [{"prompt": "a", "loras": ["a.safetensors:0.5", "owner/name"]}, {"prompt": "b", "loras": None},
             {"prompt": "c", "loras": "a.safetensors; b.safetensors:-1"}, {"prompt": "d", "loras": 3},
             {"prompt": "e", "loras": ""}]  # fmt: skip
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = load_table(tmp_path / "t.jsonl", Defaults())
    assert [row.loras for row in rows_of(table)] == [
        (LoraRef("a.safetensors", 0.5), LoraRef("owner/name")), (), (LoraRef("a.safetensors"),
         LoraRef("b.safetensors", -1.0)), ()]  # fmt: skip
    assert "row 4, column 'loras': value 3 is a int; write LoRAs as text" in table.invalid[0].error
    assert "loras" not in table.valid.extra  # not a passthrough column
    parse, default = column_rules(Defaults())["loras"]
    cells = ["", None, "a.safetensors", "a.safetensors;", " ; "]
    values, errors = parse_column("loras", cells, Defaults())
    assert not errors and values == [default if c in ("", None) else parse(c) for c in cells]


def test_config_loras_are_a_list_with_paths_next_to_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"loras": ["./loras/a.safetensors:0.25", "owner/name"]}}))
    assert load_config(path).model.loras == (f"{tmp_path}/loras/a.safetensors:0.25", "owner/name")
    path.write_text(yaml.safe_dump({"model": {"loras": "owner/name:2"}}))
    assert load_config(path).model.loras == ("owner/name:2",)
    path.write_text(yaml.safe_dump({"model": {"loras": ["a.safetensors:1e999"]}}))
    with pytest.raises(ConfigError, match=r"c.yaml: model.loras: LoRA 'a.safetensors:1e999'"):
        load_config(path)


def test_rows_without_loras_hash_as_before_and_a_set_counts_whatever_its_order(tiny_config, loras):
    from pipeline.input.lora_refs import LoraRef
    from pipeline.model.sources import resolve_sources
    from pipeline.plan.identity import request_identity
    from pipeline.plan.lora_sets import plan_lora_sets

    identity = request_identity(tiny_config, resolve_sources(tiny_config.model))
    columns = [["a cup", "a hat"], ["n", "n"], [1, 2], [8.0, 8.0], [2, 2], [64, 64], [64, 64], [False, False]]
    a, b = (LoraRef(str(loras["style"]), 0.5), LoraRef(str(loras["icons"])))
    sets = plan_lora_sets((), [(), (a, b), (b, a), (a,), (LoraRef(a.source, 0.0),)])
    keys = sets.hash_keys(range(5))
    assert keys[0] == "" and keys[1] == keys[2] and len({*keys[1:]}) == 3
    plain = identity.request_hashes(columns)
    assert identity.request_hashes(columns, ["", ""]) == plain  # no LoRA: the hash LoRAs did not exist for
    with_set = identity.request_hashes(columns, [keys[0], keys[1]])
    assert with_set[0] == plain[0] and with_set[1] != plain[1]
    assert identity.request_hashes(columns, ["", keys[2]]) == with_set  # (a, b) and (b, a): one request
    assert identity.request_hashes(columns, [keys[4], ""])[0] != plain[0]  # weight 0 is another request
