"""The README, the example config and the code say the same things: one source per fact."""

import re
from dataclasses import fields

import click
import pytest

from pipeline.cli import cli
from pipeline.common.exits import MEANINGS, markdown_table
from pipeline.input.config import Config, load_config
from pipeline.plan.identity import LOW_BITS, REDO
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def synopsis() -> dict[str, set[str]]:
    """{command: flags} from the README's command-line block (continuation lines are indented)."""
    block = section("Command line").split("```")[1]
    flags: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        if line.startswith("layerdiffuse "):
            command = line.split()[1]
            flags[command] = set()
        if command:
            flags[command] |= set(re.findall(r"--[a-z][a-z0-9-]*", line.split("#")[0]))
    return flags


def test_readme_synopsis_lists_exactly_the_flags_of_each_command():
    documented = synopsis()
    assert set(documented) == set(cli.commands)
    for name, command in cli.commands.items():
        options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
        assert documented[name] == {o for o in options if o.startswith("--") and o != "--help"}, name


def test_readme_exit_code_table_is_the_enum_s():
    assert markdown_table("generate") in section("Exit codes")


@pytest.mark.parametrize("command", sorted(MEANINGS))
def test_each_command_help_lists_its_own_exit_codes(command):
    text = cli.commands[command].get_help(click.Context(cli.commands[command], info_name=command))
    listed = text.split("Exit codes:")[1]
    assert set(re.findall(r"^\s+(\d+)\s", listed, re.M)) == {str(int(code)) for code in MEANINGS[command]}
    for code, meaning in MEANINGS[command].items():
        assert f"{int(code):<4} {meaning}" in listed


def test_default_config_file_says_the_code_s_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == Config()


def test_readme_names_every_setting_that_redoes_images_or_moves_low_bits():
    text = section("Resuming and what redoes images")
    for name in [*REDO, *LOW_BITS]:
        assert f"`{name}`" in text, name


def test_readme_module_map_matches_the_modules():
    listed = set(re.findall(r"^\| `(pipeline/[\w/]+\.py)` \|", section("Module map"), re.M))
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("*.py") if not p.name.startswith("__")}
    assert listed == modules


def test_default_config_file_shows_every_setting():
    text = (REPO / "configs" / "default.yaml").read_text()
    per_invocation = {"limit", "overwrite", "strict"}  # flags of one command line, not settings
    for section in fields(Config):
        for setting in fields(getattr(Config(), section.name)):
            if setting.name not in per_invocation:
                assert re.search(rf"^\s+{setting.name}:", text, re.M), f"{section.name}.{setting.name}"
