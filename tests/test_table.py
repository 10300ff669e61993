"""Tables: CSV / Parquet / JSONL reading, per-cell validation with precise messages, stable keys."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.input.config import Defaults, load_config
from pipeline.input.seeds import derive_seed
from pipeline.input.table import TableError, load_table
from pipeline.run.loop import read_table
from tests.helpers import plan_batches, rows_of

DEFAULTS = Defaults()


def write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_csv_with_bom_quoted_newlines_and_commas(tmp_path):
    path = write(tmp_path / "t.csv", '\ufeffprompt,seed\n"a, b\nc",7\nplain,\n')
    table = load_table(path, DEFAULTS)
    assert table.columns == ("prompt", "seed")
    assert [r.prompt for r in rows_of(table)] == ["a, b\nc", "plain"]
    assert rows_of(table)[0].seed == 7
    assert rows_of(table)[1].seed == derive_seed(0, "row-000002")


def test_defaults_are_the_hosted_api_s(tmp_path):
    row = rows_of(load_table(write(tmp_path / "t.csv", "prompt\nx\n"), DEFAULTS))[0]
    assert (row.negative_prompt, row.guidance_scale, row.num_inference_steps) == ("text, watermark", 8.0, 20)
    assert (row.width, row.height, row.enable_safety_checker) == (1024, 1024, True)


def test_parquet_and_jsonl_give_the_same_rows_as_csv(tmp_path):
    csv = write(tmp_path / "t.csv", "id,prompt,seed,width,note\na,cat,1,128,x\nb,dog,,,y\n")
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": ["cat", "dog"], "seed": pa.array([1, None], pa.int64()),
                  "width": pa.array([128, None], pa.int64()), "note": ["x", "y"]}),
        tmp_path / "t.parquet",
    )  # fmt: skip
    lines = [
        {"id": "a", "prompt": "cat", "seed": 1, "width": 128, "note": "x"},
        {"id": "b", "prompt": "dog", "note": "y"},
    ]
    jsonl = write(tmp_path / "t.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    tables = [load_table(p, DEFAULTS) for p in (csv, tmp_path / "t.parquet", jsonl)]
    assert rows_of(tables[0]) == rows_of(tables[1]) == rows_of(tables[2])
    assert [r.extra for r in rows_of(tables[1])] == [{"note": "x"}, {"note": "y"}]


@pytest.mark.parametrize(
    ("cells", "column", "fragment"),
    [
        ("cat,abc,,", "seed", "is not a number"),
        ("cat,1.5,,", "seed", "not a whole number"),
        ("cat,-1,,", "seed", "between 0 and"),
        ("cat,18446744073709551616,,", "seed", "out of range"),
        ("cat,,0,", "num_inference_steps", "between 1 and"),
        ("cat,,,100", "width", "multiple of 64"),
        ("cat,,,nan", "width", "not finite"),
        (",,,", "prompt", "every row needs a prompt"),
    ],
)
def test_invalid_cells_name_file_row_column_value_and_fix(tmp_path, cells, column, fragment):
    path = write(tmp_path / "t.csv", f"prompt,seed,num_inference_steps,width\nok,1,,\n{cells}\n")
    table = load_table(path, DEFAULTS)
    assert len(rows_of(table)) == 1 and len(table.invalid) == 1
    bad = table.invalid[0]
    assert bad.number == 2 and bad.key == "row-000002"
    assert f"{path}: row 2, column '{column}'" in bad.error and fragment in bad.error


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "..", ".hidden", "x" * 129, "a b", "C:\\x", "end."])
def test_unsafe_ids_are_rejected(tmp_path, bad_id):
    pq.write_table(pa.table({"id": [bad_id, "fine"], "prompt": ["p", "q"]}), tmp_path / "t.parquet")
    table = load_table(tmp_path / "t.parquet", DEFAULTS)
    assert [r.key for r in rows_of(table)] == ["fine"]
    assert "not a safe file name" in table.invalid[0].error


def test_duplicate_ids_ignoring_case(tmp_path):
    table = load_table(write(tmp_path / "t.csv", "id,prompt\nCat,a\ndog,b\ncat,c\n"), DEFAULTS)
    assert [r.key for r in rows_of(table)] == ["Cat", "dog"]
    assert "also used by row 1" in table.invalid[0].error
    assert table.invalid[0].key == "row-000003"  # its own key, so its record does not replace row 1's


def test_wrong_types_in_parquet(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b"], "guidance_scale": ["x", "7"]}), tmp_path / "t.parquet")
    table = load_table(tmp_path / "t.parquet", DEFAULTS)
    assert [(r.number, r.guidance_scale) for r in rows_of(table)] == [(2, 7.0)]
    assert "column 'guidance_scale': value 'x' is not a number" in table.invalid[0].error
    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "n.parquet")
    assert "must be text" in load_table(tmp_path / "n.parquet", DEFAULTS).invalid[0].error


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.csv", "", "file is empty"),
        ("header.csv", "prompt,seed\n", "no rows"),
        ("noprompt.csv", "text,seed\na,1\n", "no 'prompt' column"),
        ("clash.csv", "prompt,status\na,b\n", "clash with manifest fields"),
        ("bad.parquet", "not parquet at all", "cannot read as parquet"),
        ("t.txt", "prompt\na\n", "unknown table type"),
        ("bad.jsonl", '{"prompt": "a"}\n[1]\n', "line 2 must be a JSON object"),
    ],
)
def test_unusable_tables_are_usage_errors(tmp_path, name, content, fragment):
    """As a run reads its table (the manifest's own fields are reserved there)."""
    with pytest.raises(TableError, match=fragment):
        read_table(load_config(None), write(tmp_path / name, content))


def test_non_utf8_and_missing_files(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("prompt\ncafé\n".encode("latin-1"))
    with pytest.raises(TableError, match="not valid UTF-8"):
        load_table(tmp_path / "latin1.csv", DEFAULTS)
    with pytest.raises(TableError, match="no such file"):
        load_table(tmp_path / "absent.csv", DEFAULTS)


def test_limit_keeps_the_first_rows(tmp_path):
    table = load_table(write(tmp_path / "t.csv", "prompt\na\nb\nc\n"), DEFAULTS, limit=2)
    assert [r.prompt for r in rows_of(table)] == ["a", "b"]


def test_derived_seed_is_the_documented_function():
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"7:sprite-1").digest()[:8], "big") >> 11
    assert derive_seed(7, "sprite-1") == expected < 2**53


def test_batches_group_by_signature_in_first_appearance_order(tmp_path):
    text = "prompt,width\na,64\nb,128\nc,64\nd,64\ne,128\n"
    rows = rows_of(load_table(write(tmp_path / "t.csv", text), DEFAULTS))
    batches = plan_batches(rows, 2)
    assert [[r.prompt for r in b.rows] for b in batches] == [["a", "c"], ["d"], ["b", "e"]]
    assert [b.index for b in batches] == [0, 1, 2]


def test_shipped_example_tables_agree():
    from tests.conftest import REPO

    csv = load_table(REPO / "data" / "prompts.csv", DEFAULTS)
    parquet = load_table(REPO / "data" / "prompts.parquet", DEFAULTS)
    assert rows_of(csv) == rows_of(parquet) and not csv.invalid and 10 <= csv.total <= 20
    assert [r.extra for r in rows_of(csv)] == [r.extra for r in rows_of(parquet)]
