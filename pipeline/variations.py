"""The table stage's expansion of rows into images: `num_images` variations and prompt templates, column-wise.

A row gives one image unless it asks for more (`num_images`, `--images-per-prompt`) or its prompt or
negative prompt is a template (pipeline/expand.py has the rules for keys, seeds and prompts). Rows that
give exactly themselves cost nothing: a table without a `num_images` column, without a default above 1 and
without template syntax is returned as it came, after one scan of its text in C (`str.join`, `in`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .cells import MAX_PROMPT_CHARS, CellError, show, text
from .expand import TemplateError, expand_random, expand_row, has_template
from .records import InvalidRow

_MARKER = re.compile(r"[{}]|__")  # every template has one of these (expand.has_template decides)
EXPANSION_FIELDS = ("image_index", "source_id", "template", "negative_template", "position")


class RowError(ValueError):
    """A row cannot be expanded; the message starts with the column."""


@dataclass(frozen=True)
class Expanded:
    """One image of a row: what differs from the row it came from."""

    key: str
    prompt: str
    negative_prompt: str
    seed: int
    index: int


def marked_rows(values: list) -> list[int]:
    """Positions of the cells that use template syntax; one C-level scan when none does."""
    joined = "\n".join(values)  # a newline ends a `__name__` (whitespace), so no match spans two cells
    if "{" not in joined and "}" not in joined and "__" not in joined:
        return []
    import numpy as np

    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) + 1
    starts = np.cumsum(lengths) - lengths
    hits = np.fromiter((m.start() for m in _MARKER.finditer(joined)), dtype=np.int64)
    rows = np.unique(np.searchsorted(starts, hits, side="right") - 1)
    return [int(i) for i in rows if has_template(values[i])]


def expand_columns(path: Path, valid, invalid: list[InvalidRow], counts: list | None, cells: dict[str, list],
                   templates, allow_empty_prompt: bool = False) -> tuple:  # fmt: skip
    """(the images as RowColumns, the invalid rows in input order).

    `valid`: the table's valid rows (RowColumns); `counts`: each valid row's num_images (None: one
    each); `cells`: the raw columns, for the records of rows that turn out invalid here; `templates`: a
    config.TemplateConfig. Drawn prompts obey the prompt cells' rules (`allow_empty_prompt`).
    """
    special = _special_rows(valid, counts, "negative_prompt" in cells)
    if not special:
        return valid, invalid
    owners = {k.casefold(): number for k, number in zip(valid.keys, valid.numbers, strict=True)}
    owners.update((row.key.casefold(), row.number) for row in invalid)
    images: dict[int, list[Expanded]] = {}
    failed: list[InvalidRow] = []
    for i in special:
        try:
            row_images = _images(valid, i, counts, templates, allow_empty_prompt)
            images[i] = _claim(row_images, valid.keys[i], valid.numbers[i], owners)
        except RowError as exc:
            number = valid.numbers[i]
            raw = {name: values[number - 1] for name, values in cells.items()}
            failed.append(InvalidRow(number, valid.keys[i], (f"{path}: row {number}, {exc}",), raw))
    invalid = sorted([*invalid, *failed], key=lambda row: row.number)
    return _columns(valid, images, {row.number for row in failed}, invalid), invalid


def _special_rows(valid, counts: list | None, negative_column: bool) -> list[int]:
    """Rows that give something other than exactly themselves, in order."""
    special = set(marked_rows(valid.params["prompt"]))
    negatives = valid.params["negative_prompt"]
    if negative_column:
        special |= set(marked_rows(negatives))
    elif negatives and has_template(negatives[0]):  # the default, the same for every row
        special = set(range(len(negatives)))
    if counts is not None:
        import numpy as np

        special |= set(np.flatnonzero(np.asarray(counts, dtype=np.int64) != 1).tolist())
    return sorted(special)


def _images(valid, i: int, counts: list | None, templates, allow_empty: bool) -> list[Expanded]:
    key, seed = valid.keys[i], valid.params["seed"][i]
    prompt, negative = valid.params["prompt"][i], valid.params["negative_prompt"][i]
    count = 1 if counts is None else counts[i]
    wildcards = Path(templates.wildcards).expanduser() if templates.wildcards else None
    try:
        variants = expand_row(key, prompt, seed, count, templates.combinatorial, wildcards, templates.combination_limit)
    except TemplateError as exc:
        raise RowError(f"column 'prompt': template {show(prompt)}: {exc}") from None
    except ValueError as exc:  # seed + index beyond 2^64 - 1
        raise RowError(f"column 'seed': {exc} (or lower num_images)") from None
    try:
        negatives = [expand_random(negative, v.seed, wildcards) for v in variants]
    except TemplateError as exc:
        raise RowError(f"column 'negative_prompt': template {show(negative)}: {exc}") from None
    for v, drawn in zip(variants, negatives, strict=True):
        _check_drawn("prompt", prompt, v.prompt, allow_empty)
        _check_drawn("negative_prompt", negative, drawn, True)
    return [Expanded(v.key, v.prompt, n, v.seed, v.index) for v, n in zip(variants, negatives, strict=True)]


def _check_drawn(column: str, template: str, drawn: str, allow_empty: bool) -> None:
    """A drawn prompt obeys the rules of a prompt cell (e.g. `{a|}` can draw nothing, a wildcard line be long)."""
    if not has_template(template):
        return  # used as written: checked as a cell already
    try:
        text(drawn, MAX_PROMPT_CHARS, allow_empty)
    except CellError as exc:
        raise RowError(f"column {column!r}: template {show(template)} gives {show(drawn)}, which {exc}") from None


def _claim(images: list[Expanded], key: str, number: int, owners: dict[str, int]) -> list[Expanded]:
    """The images' keys, checked against every other key (ignoring case), then taken by row `number`."""
    new = [image.key for image in images if image.key != key]
    for image_key in new:
        folded = image_key.casefold()
        if folded in owners:
            raise RowError(
                f"column 'id': this row's image {image_key!r} would have the key of row {owners[folded]} "
                "(keys are compared ignoring case); change one of the two ids"
            )
        owners[folded] = number
    return images


def _columns(valid, images: dict[int, list[Expanded]], failed: set[int], invalid: list[InvalidRow]):
    """The RowColumns of every image, with where each came from and its place among the records."""
    p = valid.params
    entries = []  # (row index, key, prompt, negative prompt, seed, image index, source_id, template, negative)
    for i, number in enumerate(valid.numbers):
        if number in failed:
            continue
        if i not in images:  # itself, in a table where other rows expand
            entries.append((i, valid.keys[i], p["prompt"][i], p["negative_prompt"][i], p["seed"][i], 0, None, None,
                            None))  # fmt: skip
            continue
        origin = (valid.keys[i], _template_of(p["prompt"][i]), _template_of(p["negative_prompt"][i]))
        entries += [(i, e.key, e.prompt, e.negative_prompt, e.seed, e.index, *origin) for e in images[i]]
    take, keys, prompts, negatives, seeds, *image = (list(c) for c in (list(zip(*entries, strict=True)) or [()] * 9))
    numbers = [valid.numbers[i] for i in take]
    params = {name: [values[i] for i in take] for name, values in p.items()}
    params.update(prompt=prompts, negative_prompt=negatives, seed=seeds)
    extra = {name: [values[i] for i in take] for name, values in valid.extra.items()}
    expansion = dict(zip(EXPANSION_FIELDS, [*image, _positions(numbers, invalid)], strict=True))
    return replace(valid, numbers=numbers, keys=keys, params=params, extra=extra, expansion=expansion)


def _template_of(text: str) -> str | None:
    return text if has_template(text) else None


def _positions(numbers: list[int], invalid: list[InvalidRow]) -> list[int]:
    """Each image's place among the records: the table's order, a row's images together, invalid rows between."""
    skipped = iter(row.number for row in invalid)
    next_invalid, position, positions = next(skipped, None), 0, []
    for number in numbers:
        while next_invalid is not None and next_invalid < number:
            position += 1
            next_invalid = next(skipped, None)
        positions.append(position)
        position += 1
    return positions
