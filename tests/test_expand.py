"""Prompt templates: seeded random draws, combinations, wildcard files, errors, and expanded keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.common.names import SAFE_NAME
from pipeline.input.templates import (
    TemplateError,
    combination_key,
    expand_all,
    expand_random,
    expand_row,
    has_template,
    variant_key,
    variant_seed,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["{red|green|blue} potion", "{2$$fire|ice|poison|holy} sword", "__colors__ __sub/shapes__ gem"]


@pytest.fixture
def wildcards(tmp_path) -> Path:
    folder = tmp_path / "wildcards"
    (folder / "sub").mkdir(parents=True)
    (folder / "colors.txt").write_text("# a comment line\nred\ngreen\nblue\n\nviolet\n")
    (folder / "sub" / "shapes.txt").write_text("round\nsquare\n")
    (folder / "sizes.json").write_text(json.dumps(["tiny", "huge"]))
    return folder


DRAW_SCRIPT = """
import json, random, sys
from pathlib import Path
from pipeline.input.templates import expand_random, expand_all
random.seed(int(sys.argv[2]))  # the global random state must not matter
templates, folder = json.loads(sys.argv[1]), Path(sys.argv[3])
print(json.dumps({
    "random": [[expand_random(t, seed, folder) for seed in range(40)] for t in templates],
    "all": [expand_all(t, folder) for t in templates],
}))
"""


def draw_in_subprocess(hash_seed: str, global_seed: int, folder: Path) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    args = [sys.executable, "-c", DRAW_SCRIPT, json.dumps(TEMPLATES), str(global_seed), str(folder)]
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_same_template_and_seed_give_the_same_prompt_in_any_process(wildcards):
    first = draw_in_subprocess("0", 1, wildcards)
    second = draw_in_subprocess("4242", 2, wildcards)
    assert first == second
    here = [[expand_random(t, seed, wildcards) for seed in range(40)] for t in TEMPLATES]
    assert first["random"] == here
    for template, draws, everything in zip(TEMPLATES, here, first["all"], strict=True):
        assert set(draws) <= set(everything), template
        assert len(set(draws)) >= 3, template  # the seed really chooses


def test_random_draws_follow_the_template(wildcards):
    draws = {expand_random("{red|green|blue} potion", seed) for seed in range(60)}
    assert draws == {"red potion", "green potion", "blue potion"}
    for seed in range(30):
        picked = expand_random("{2$$fire|ice|poison} sword", seed).removesuffix(" sword").split(",")
        assert len(picked) == 2 and len(set(picked)) == 2 and set(picked) <= {"fire", "ice", "poison"}
        colour, shape, gem = expand_random("__colors__ __sub/shapes__ gem", seed, wildcards).split(" ")
        assert colour in {"red", "green", "blue", "violet"} and shape in {"round", "square"} and gem == "gem"
    assert expand_random("a {red|blue} potion", 2**64 - 1) == expand_random("a {red|blue} potion", 2**64 - 1)


def test_combinations(wildcards):
    assert expand_all("{a|b|c} {x|y}") == ["a x", "a y", "b x", "b y", "c x", "c y"]
    assert sorted(expand_all("{2$$a|b|c}")) == ["a,b", "a,c", "b,a", "b,c", "c,a", "c,b"]
    assert len(expand_all("__colors__ __sub/shapes__ __sizes__", wildcards)) == 4 * 2 * 2
    assert expand_all("__colors__", wildcards) == ["blue", "green", "red", "violet"]  # the library sorts lines
    assert expand_all("{a|ab}{bc|c} potion") == ["abc potion", "ac potion", "abbc potion"]  # "abc" twice
    assert expand_all("plain prompt") == ["plain prompt"]
    assert len(expand_all("{a|b|c} {x|y}", limit=6)) == 6
    with pytest.raises(TemplateError, match="gives 6 prompts, more than the combination limit 5"):
        expand_all("{a|b|c} {x|y}", limit=5)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("__nope__ potion", r"wildcard __nope__ not found: no nope.txt \(or .json, .yaml\) in the wildcard folder .*"),
        ("{red|blue potion", r"unbalanced braces in the template: 1 '\{' and 0 '\}'"),
        ("{a|{b|c} potion", r"unbalanced braces in the template: 2 '\{' and 1 '\}'"),
        ("cost $$ {a|b}", r"template syntax error at character 6 \('\$\$ \{a\|b\}'\)"),
        ("__loop__", "the wildcards refer to each other in a loop"),
        ("${undefined} {a|b}", "cannot expand the template: .*undefined"),
    ],
)
def test_template_errors(wildcards, template, message):
    (wildcards / "loop.txt").write_text("__loop__ again\n")
    for expand in (lambda: expand_random(template, 1, wildcards), lambda: expand_all(template, wildcards)):
        with pytest.raises(TemplateError, match=message):
            expand()


def test_wildcard_folder_errors(tmp_path):
    with pytest.raises(TemplateError, match="__colors__ not found: .* and no wildcard folder is set"):
        expand_random("__colors__ potion", 1)
    with pytest.raises(TemplateError, match=f"the wildcard folder {tmp_path / 'missing'} does not exist"):
        expand_all("__colors__", tmp_path / "missing")


def test_changed_wildcard_files_are_read_again(wildcards):
    assert expand_all("__sub/shapes__", wildcards) == ["round", "square"]
    (wildcards / "sub" / "shapes.txt").write_text("round\nsquare\nstar\n")
    assert expand_all("__sub/shapes__", wildcards) == ["round", "square", "star"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red potion, (glossy:1.2), [metal|wood], snake_case, $5, 100%, #1, <lora:x:0.5>", False),
        ("", False),
        ("{red|blue} potion", True),
        ("a __colors__ potion", True),
        ("${c={red|blue}} ${c}", True),
        ("unbalanced { brace", True),
    ],
)
def test_has_template(text, expected):
    assert has_template(text) is expected
    if not expected:
        assert expand_random(text, 3) == text and expand_all(text) == [text]


def test_plain_row_with_one_image_keeps_its_key_seed_and_prompt():
    for combinatorial in (False, True):
        variants = expand_row("hero", "a knight, $5 sword, #1", 12, combinatorial=combinatorial)
        assert [(v.key, v.prompt, v.seed, v.index) for v in variants] == [("hero", "a knight, $5 sword, #1", 12, 0)]


def test_variations_use_seed_plus_index_and_can_be_redone_alone(wildcards):
    variants = expand_row("gem", "__colors__ gem", 100, num_images=4, wildcards=wildcards)
    assert [(v.key, v.seed, v.index) for v in variants] == [
        ("gem", 100, 0),
        ("gem.1", 101, 1),
        ("gem.2", 102, 2),
        ("gem.3", 103, 3),
    ]
    for v in variants:  # image i is the row again with seed + i and num_images 1
        (alone,) = expand_row("gem", "__colors__ gem", v.seed, wildcards=wildcards)
        assert alone.prompt == v.prompt


def test_combination_keys_name_the_prompt(wildcards):
    before = expand_row("gem", "__colors__ gem", 5, num_images=2, combinatorial=True, wildcards=wildcards)
    assert len(before) == 8 and len({v.key for v in before}) == 8
    assert {v.seed for v in before} == {5, 6}
    assert all(v.key == variant_key(combination_key("gem", v.prompt), v.index) for v in before)
    (wildcards / "colors.txt").write_text("amber\nred\ngreen\nblue\nviolet\n")  # an unrelated new line
    after = expand_row("gem", "__colors__ gem", 5, num_images=2, combinatorial=True, wildcards=wildcards)
    assert {(v.key, v.prompt, v.seed) for v in before} < {(v.key, v.prompt, v.seed) for v in after}
    assert len(after) == 10


def test_keys_stay_valid_and_distinct():
    long_a, long_b = "a" * 128, "a" * 127 + "b"
    keys = [variant_key(k, i) for k in ("x", long_a, long_b) for i in range(12)]
    keys += [combination_key(k, p) for k in ("x", long_a, long_b) for p in ("red gem", "blue gem")]
    assert all(SAFE_NAME.fullmatch(k) for k in keys)
    assert len(set(keys)) == len(keys)
    assert variant_key("row-000001", 0) == "row-000001" and variant_key("row-000001", 7) == "row-000001.7"
    assert combination_key("gem", "red gem") == combination_key("gem", "red gem") != combination_key("gem", "red gem ")


def test_key_and_seed_errors():
    with pytest.raises(ValueError, match="is not a valid key"):
        variant_key("../x", 1)
    with pytest.raises(ValueError, match="exceeds 2\\^64 - 1"):
        variant_seed(2**64 - 2, 2)
    with pytest.raises(ValueError, match="num_images must be a whole number of 1 or more"):
        expand_row("x", "p", 1, num_images=0)
