"""The table stage's expansion of rows into images: `num_images` variations and prompt templates, column-wise.

A row gives one image unless it asks for more (`num_images`, `--images-per-prompt`) or its prompt or
negative prompt is a template (pipeline/input/templates.py has the rules for keys, seeds and prompts). Rows that
give exactly themselves cost nothing: a table without a `num_images` column, without a default above 1 and
without template syntax is returned as it came, after one scan of its text in C (`str.join`, `in`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .cells import MAX_PROMPT_CHARS, CellError, show, text
from .rows import InvalidRow
from .templates import MAX_SEED, TemplateError, expand_random, expand_row, has_template, variant_keys

_MARKER = re.compile(r"[{}]|__")  # every template has one of these (expand.has_template decides)


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
    marked = _marked(valid, "negative_prompt" in cells)
    special = _special_rows(marked, counts)
    if not special:
        return valid, invalid
    owners = {k.casefold(): number for k, number in zip(valid.keys, valid.numbers, strict=True)}
    owners.update((row.key.casefold(), row.number) for row in invalid)
    plan = Plan(list(counts) if counts is not None else [1] * len(valid), {}, {}, marked)
    failed: list[InvalidRow] = []
    templated = marked.any
    for i in special:
        try:
            _plan_row(plan, valid, i, templates, allow_empty_prompt, i in templated)
            _claim(plan.keys[i], valid.keys[i], valid.numbers[i], owners)
        except RowError as exc:
            plan.forget(i)
            number = valid.numbers[i]
            raw = {name: values[number - 1] for name, values in cells.items()}
            failed.append(InvalidRow(number, valid.keys[i], (f"{path}: row {number}, {exc}",), raw))
    invalid = sorted([*invalid, *failed], key=lambda row: row.number)
    return _columns(valid, plan, invalid), invalid


@dataclass(frozen=True)
class Marks:
    """Which rows' prompt and negative prompt are templates (by index in the valid rows)."""

    prompts: set[int]
    negatives: set[int]

    @property
    def any(self) -> set[int]:
        return self.prompts | self.negatives


@dataclass(frozen=True)
class Plan:
    """What each valid row gives: how many images, their keys (rows that expand) and drawn prompts (templates)."""

    sizes: list[int]  # images per row; 0 for a row that turned out invalid
    keys: dict[int, list[str]]  # {row index: its images' keys}
    drawn: dict[int, tuple[list[int], list[str], list[str]]]  # {row index: (image indices, prompts, negatives)}
    marked: Marks

    def forget(self, i: int) -> None:
        """Row i turned out invalid: it gives no image."""
        self.sizes[i] = 0
        self.keys.pop(i, None)
        self.drawn.pop(i, None)


def _marked(valid, negative_column: bool) -> Marks:
    negatives = valid.params["negative_prompt"]
    if negative_column:
        marked = set(marked_rows(negatives))
    else:  # the default, the same for every row
        marked = set(range(len(negatives))) if negatives and has_template(negatives[0]) else set()
    return Marks(set(marked_rows(valid.params["prompt"])), marked)


def _special_rows(marked: Marks, counts: list | None) -> list[int]:
    """Rows that give something other than exactly themselves, in order."""
    special = marked.any
    if counts is not None:
        import numpy as np

        special |= set(np.flatnonzero(np.asarray(counts, dtype=np.int64) != 1).tolist())
    return sorted(special)


def _plan_row(plan: Plan, valid, i: int, templates, allow_empty: bool, templated: bool) -> None:
    key, seed, count = valid.keys[i], valid.params["seed"][i], plan.sizes[i]
    if not templated:  # more images of the same prompts: keys `<key>.<i>`, seeds `seed + i`
        if seed > MAX_SEED - (count - 1):
            raise RowError(f"column 'seed': seed {seed} + image index {count - 1} exceeds 2^64 - 1; use a smaller "
                           "seed (or lower num_images)")  # fmt: skip
        plan.keys[i] = variant_keys(key, count)
        return
    images = _images(valid, i, count, templates, allow_empty)
    plan.sizes[i] = len(images)
    plan.keys[i] = [e.key for e in images]
    plan.drawn[i] = ([e.index for e in images], [e.prompt for e in images], [e.negative_prompt for e in images])


def _images(valid, i: int, count: int, templates, allow_empty: bool) -> list[Expanded]:
    """The images of a row with a template in its prompt or negative prompt (pipeline/input/templates.py)."""
    key, seed = valid.keys[i], valid.params["seed"][i]
    prompt, negative = valid.params["prompt"][i], valid.params["negative_prompt"][i]
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


def _claim(keys: list[str], key: str, number: int, owners: dict[str, int]) -> None:
    """The images' keys, checked against every other key (ignoring case), then taken by row `number`."""
    for image_key in keys:
        if image_key == key:
            continue  # image 0 keeps the row's key
        folded = image_key.casefold()
        if folded in owners:
            raise RowError(
                f"column 'id': this row's image {image_key!r} would have the key of row {owners[folded]} "
                "(keys are compared ignoring case); change one of the two ids"
            )
        owners[folded] = number


def _columns(valid, plan: Plan, invalid: list[InvalidRow]):
    """The RowColumns of every image, column by column: row values repeated, then what differs per image."""
    import numpy as np

    sizes = np.asarray(plan.sizes, dtype=np.int64)
    take = np.repeat(np.arange(len(sizes)), sizes).tolist()
    index = (np.arange(len(take)) - np.repeat(np.cumsum(sizes) - sizes, sizes)).tolist()  # within the row
    params = {name: [values[i] for i in take] for name, values in valid.params.items()}
    keys = [valid.keys[i] for i in take]
    start = 0
    for i, size in enumerate(plan.sizes):  # splice in what expanded rows give
        if i in plan.keys:
            keys[start : start + size] = plan.keys[i]
        if i in plan.drawn:  # templates: combinations repeat indices 0 .. num_images - 1
            index[start : start + size], params["prompt"][start : start + size], \
                params["negative_prompt"][start : start + size] = plan.drawn[i]  # fmt: skip
        start += size
    params["seed"] = [seed + n for seed, n in zip(params["seed"], index, strict=True)]  # image i: seed + i
    numbers = [valid.numbers[i] for i in take]
    extra = {name: [values[i] for i in take] for name, values in valid.extra.items()}
    loras = None if valid.loras is None else [valid.loras[i] for i in take]
    inputs = {name: [values[i] for i in take] for name, values in valid.inputs.items()}
    return replace(valid, numbers=numbers, keys=keys, params=params, extra=extra, loras=loras, inputs=inputs,
                   expansion=_origins(valid, plan, take, index, _positions(numbers, invalid)))  # fmt: skip


def _origins(valid, plan: Plan, take: list[int], index: list[int], positions: list[int]) -> dict[str, list]:
    """Row fields of each image: index, source row key (rows that expand), templates, place among the records."""
    expanded, prompts, negatives = plan.keys, plan.marked.prompts, plan.marked.negatives
    p = valid.params
    return {
        "image_index": index,
        "source_id": [valid.keys[i] if i in expanded else None for i in take],
        "template": [p["prompt"][i] if i in prompts else None for i in take],
        "negative_template": [p["negative_prompt"][i] if i in negatives else None for i in take],
        "position": positions,
    }


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
