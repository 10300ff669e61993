"""Rows that give several images (num_images, prompt templates) in the table stage: keys, seeds, prompts, errors."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli
from pipeline.input.config import Defaults, TemplateConfig
from pipeline.input.seeds import derive_seed
from pipeline.input.table import load_table
from pipeline.input.templates import expand_random
from pipeline.input.variations import marked_rows
from tests.helpers import rows_of

DEFAULTS = Defaults()


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "metals.txt").write_text("# metals\niron\ngold\nobsidian\n")
    (folder / "long.txt").write_text("x" * 20_001 + "\n")
    return folder


def table(tmp_path, text, defaults=DEFAULTS, **templates):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return load_table(path, defaults, templates=TemplateConfig(**templates))


def images(t):
    return [(r.key, r.number, r.seed, r.image_index, r.source_id) for r in rows_of(t)]


def test_a_table_without_variations_or_templates_is_left_as_read(tmp_path):
    t = table(tmp_path, "id,prompt,seed,num_images\na,a cat,1,\nb,a dog {in braces},2,1\nc,snake_case,3,1\n")
    assert t.valid.expansion == {"image_index": [0, 0, 0], "source_id": [None, "b", None],
                                 "template": [None, "a dog {in braces}", None], "negative_template": [None] * 3,
                                 "position": [0, 1, 2]}  # fmt: skip
    plain = table(tmp_path, "id,prompt,seed\na,a cat,1\nb,a dog,2\n")
    assert plain.valid.expansion == {} and [r.key for r in rows_of(plain)] == ["a", "b"] == plain.keys
    assert [(r.image_index, r.source_id, r.template, r.position) for r in rows_of(plain)] == [(0, None, None, None)] * 2


def test_image_i_has_seed_plus_i_and_its_own_key(tmp_path):
    text = "id,prompt,seed,num_images\npotion,red potion,10,3\nsword,sword,,\nbad,x,abc,\nshield,shield,5,1\n"
    t = table(tmp_path, text, Defaults(num_images=2))
    sword_seed = derive_seed(0, "sword")
    assert images(t) == [
        ("potion", 1, 10, 0, "potion"), ("potion.1", 1, 11, 1, "potion"), ("potion.2", 1, 12, 2, "potion"),
        ("sword", 2, sword_seed, 0, "sword"), ("sword.1", 2, sword_seed + 1, 1, "sword"),
        ("shield", 4, 5, 0, None),
    ]  # fmt: skip
    assert t.keys == ["potion", "potion.1", "potion.2", "sword", "sword.1", "bad", "shield"]
    assert [r.position for r in rows_of(t)] == [0, 1, 2, 3, 4, 6]  # the invalid row keeps its place
    assert (t.row_count, t.total, len(t.invalid)) == (4, 7, 1)
    more = table(tmp_path, text.replace("red potion,10,3", "red potion,10,4"), Defaults(num_images=2))
    assert set(images(t)) < set(images(more))  # raising num_images keeps every image already asked for


def test_random_templates_draw_each_image_s_prompt_from_its_seed(tmp_path, wildcards):
    text = ('id,prompt,negative_prompt,num_images,seed\npotion,"a {red|green|blue} potion",{blurry|dark},3,10\n'
            'sword,a sword of __metals__,,,2000\n')  # fmt: skip
    t = table(tmp_path, text, wildcards=str(wildcards))
    rows = rows_of(t)
    assert [r.key for r in rows] == ["potion", "potion.1", "potion.2", "sword"]
    for row in rows[:3]:
        assert row.prompt == expand_random("a {red|green|blue} potion", row.seed)
        assert row.negative_prompt == expand_random("{blurry|dark}", row.seed) in ("blurry", "dark")
        assert (row.template, row.negative_template) == ("a {red|green|blue} potion", "{blurry|dark}")
    assert [r.prompt for r in rows[:3]] == ["a green potion", "a blue potion", "a red potion"]  # docs/sprites.md
    assert rows[3].prompt == expand_random("a sword of __metals__", 2000, wildcards) == "a sword of iron"
    assert (rows[3].negative_prompt, rows[3].negative_template) == ("text, watermark", None)
    again = table(tmp_path, text, wildcards=str(wildcards))
    assert [r.prompt for r in rows_of(again)] == [r.prompt for r in rows]


def test_combinations_are_named_by_their_prompt(tmp_path, wildcards):
    text = "id,prompt,num_images,seed\nsword,a sword of __metals__,2,7\nplain,a cat,,1\n"
    t = table(tmp_path, text, combinatorial=True, wildcards=str(wildcards))
    expected = []
    for metal in ("gold", "iron", "obsidian"):  # the library's order: lines sorted
        key = "sword." + hashlib.sha256(f"a sword of {metal}".encode()).hexdigest()[:10]
        expected += [(key, f"a sword of {metal}", 7, 0), (f"{key}.1", f"a sword of {metal}", 8, 1)]
    assert [(r.key, r.prompt, r.seed, r.image_index) for r in rows_of(t)[:6]] == expected
    assert {r.source_id for r in rows_of(t)[:6]} == {"sword"} and rows_of(t)[6].key == "plain"
    (wildcards / "metals.txt").write_text("bronze\niron\ngold\nobsidian\n")
    grown = table(tmp_path, text, combinatorial=True, wildcards=str(wildcards))
    assert {(r.key, r.prompt, r.seed) for r in rows_of(t)} < {(r.key, r.prompt, r.seed) for r in rows_of(grown)}
    limited = table(tmp_path, text, combinatorial=True, wildcards=str(wildcards), combination_limit=3)
    assert "gives more than 3 prompts" in limited.invalid[0].error and [r.key for r in rows_of(limited)] == ["plain"]


@pytest.mark.parametrize(
    ("cells", "column", "fragment"),
    [
        ('"a {red|blue potion",,,', "prompt", "unbalanced braces"),
        ("a __nope__ potion,,,", "prompt", "wildcard __nope__ not found: no nope.txt"),
        ("a potion,{x|y,,", "negative_prompt", "unbalanced braces"),
        (f"a potion,,{2**64 - 1},2", "seed", "exceeds 2^64 - 1"),
        ("a potion,,,0", "num_images", "between 1 and 1000"),
        ("a potion,,,many", "num_images", "is not a number"),
        ('"{ | }",,,', "prompt", "gives '', which is blank"),
        ("a potion,__long__,,", "negative_prompt", "has 20001 characters; the limit is 20000"),
    ],
)
def test_expansion_errors_make_the_row_invalid_naming_file_row_and_column(tmp_path, wildcards, cells, column,
                                                                         fragment):  # fmt: skip
    t = table(tmp_path, f"prompt,negative_prompt,seed,num_images\nfine,,,\n{cells}\n", wildcards=str(wildcards))
    assert [r.key for r in rows_of(t)] == ["row-000001"]
    (bad,) = t.invalid
    assert bad.number == 2 and f"{tmp_path / 't.csv'}: row 2, column '{column}'" in bad.error
    assert fragment in bad.error
    assert bad.values["prompt"] == cells.split(",")[0].strip('"')  # the raw cells, for the manifest's `input`


def test_an_image_key_that_is_another_row_s_id_makes_the_expanding_row_invalid(tmp_path):
    t = table(tmp_path, "id,prompt,num_images\npotion,a potion,3\nPOTION.2,a user's own row,\nx,x,2\n")
    assert [r.key for r in rows_of(t)] == ["POTION.2", "x", "x.1"]
    (bad,) = t.invalid
    assert bad.key == "potion" and "column 'id'" in bad.error
    assert "image 'potion.2' would have the key of row 2 (keys are compared ignoring case)" in bad.error
    assert t.keys == ["potion", "POTION.2", "x", "x.1"]


def test_parquet_rows_with_num_images_and_templates(tmp_path):
    columns = {"id": ["a", "b"], "prompt": ["{x|y} gem", "plain"], "num_images": pa.array([2, None], pa.int64()),
               "seed": pa.array([3, 4], pa.int64()), "note": ["n1", "n2"]}  # fmt: skip
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    t = load_table(tmp_path / "t.parquet", DEFAULTS)
    assert [(r.key, r.seed, r.extra) for r in rows_of(t)] == [("a", 3, {"note": "n1"}), ("a.1", 4, {"note": "n1"}),
                                                          ("b", 4, {"note": "n2"})]  # fmt: skip
    assert "num_images" not in rows_of(t)[0].extra


def test_marked_rows_finds_exactly_the_templates():
    values = ["a cat", "{a|b}", "x__y", "a __w__ b", "snake_case", "a } b", "__not a__ wildcard", "z"]
    assert marked_rows(values) == [1, 3, 5]
    assert marked_rows(["a", "b_", "_c"]) == []  # no `__` across two cells


def test_validate_counts_rows_and_images(tmp_path, wildcards):
    (tmp_path / "t.csv").write_text("id,prompt,num_images\na,__metals__ gem,2\nb,plain,\nc,{bad,\n")
    args = ["validate", str(tmp_path / "t.csv"), "--wildcards", str(wildcards), "--combinatorial"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 3
    assert {k: report[k] for k in ("rows", "valid", "invalid", "images")} == {"rows": 3, "valid": 2, "invalid": 1,
                                                                              "images": 7}  # fmt: skip
    assert "row 3, column 'prompt': template '{bad': unbalanced braces" in report["problems"][0]
    text = CliRunner().invoke(cli, [*args, "--images-per-prompt", "3"]).output
    assert "3 rows, 2 valid, 1 invalid, 9 images" in text
    missing = CliRunner().invoke(cli, ["validate", str(tmp_path / "t.csv"), "--wildcards", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "templates.wildcards must be a folder" in missing.output


ids = st.sampled_from(["a", "A", "a.1", "a.2", "A.1.1", "b", "b.1", "row-000001", "row-000001.1", None])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(ids, st.sampled_from(["", "1", "2", "3", "0"]), st.booleans()), min_size=1, max_size=8))
def test_keys_stay_unique_and_every_row_is_accounted_for(tmp_path, rows):
    lines = [f"{i or ''},{'{x|y} gem' if t else 'gem'},{n}" for i, n, t in rows]
    for combinatorial in (False, True):
        t = table(tmp_path, "id,prompt,num_images\n" + "\n".join(lines) + "\n", combinatorial=combinatorial)
        keys = [k.casefold() for k in t.keys]
        assert len(keys) == len(set(keys)) == t.total
        assert sorted({r.number for r in rows_of(t)} | {r.number for r in t.invalid}) == list(range(1, len(rows) + 1))
        assert not {r.number for r in rows_of(t)} & {r.number for r in t.invalid}
        for row in rows_of(t):
            assert t.keys[row.position if row.position is not None else row.number - 1] == row.key
