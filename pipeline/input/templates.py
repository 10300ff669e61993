"""Prompt templates (Dynamic Prompts syntax) and the keys and seeds of rows expanded into several images.

Templates: `{red|green|blue} potion`, `{2$$a|b|c}`, `{1-3$$a|b|c}`, `__colors__` (a line of
`colors.txt` in the wildcard folder; `__sub/name__` for subfolders, `.json` / `.yaml` files too), and
the rest of the `dynamicprompts` syntax; in a template, `#` starts a comment to the end of the line.

- Random mode draws one prompt from a seed with its own `random.Random(seed)`, the convention of the
  Dynamic Prompts extension: the same template, seed, wildcard files and library version give the
  same prompt on every machine and run, whatever PYTHONHASHSEED or the global random state.
- Combinatorial mode lists every combination, in the library's order, identical ones once.

Keys: image i > 0 of a row is `<key>.<i>` with seed `seed + i` (AUTOMATIC1111's convention: it can be
redone alone as a row with that seed); image 0 keeps the row's key and seed, so a plain row keeps its
outputs whatever `num_images` becomes. A combination is `<key>.<first 10 hex digits of sha256(prompt)>`:
it names the prompt itself, so it does not move when other combinations appear or go.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..common.names import SAFE_NAME

MAX_KEY = 128
MAX_SEED = 2**64 - 1
DEFAULT_COMBINATION_LIMIT = 1000  # more from one row is almost surely a mistake in the template
MAX_COMBINATION_LIMIT = 1_000_000  # the library lists some 40,000 a second: a larger limit could run for hours
HASH_DIGITS = 10  # 40 bits: two of 1,000 combinations share one with odds of about 1 in 2 million
_TEMPLATE = re.compile(r"[{}]|__\S+?__")  # variants, variables and wraps all use braces


class TemplateError(ValueError):
    """A template cannot be expanded; the message says why (the caller adds file, row and column)."""


def has_template(text: str) -> bool:
    """True when the text uses template syntax: braces or a `__wildcard__`. Plain prompts stay as they are."""
    return bool(_TEMPLATE.search(text))


def expand_random(template: str, seed: int, wildcards: Path | None = None) -> str:
    """One prompt drawn from the template with `random.Random(seed)`; plain text comes back unchanged."""
    if not has_template(template):
        return template
    from random import Random

    (prompt,) = _sample(template, "random", wildcards, 1, Random(seed))
    return prompt


def expand_all(template: str, wildcards: Path | None = None, limit: int = DEFAULT_COMBINATION_LIMIT) -> list[str]:
    """Every distinct prompt the template can give, in order; TemplateError above `limit` of them."""
    if not has_template(template):
        return [template]
    from random import Random

    counted = _combinations(_tree(template))
    if counted is not None and counted > limit:  # refused before listing them: that could take years
        raise TemplateError(f"the template gives {counted:,} prompts, more than the combination limit {limit:,}; "
                            f"split it, or raise the limit (at most {MAX_COMBINATION_LIMIT:,})")  # fmt: skip
    prompts = _sample(template, "combinatorial", wildcards, limit + 1, Random(0))
    distinct = list(dict.fromkeys(prompts))
    if len(prompts) > limit:
        raise TemplateError(
            f"the template gives more than {limit} prompts; split it, or raise the combination limit "
            "(random {~...} and cyclical {@...} variants never end in combinatorial mode)"
        )
    return distinct


def _combinations(node) -> int | None:
    """How many prompts the library lists for a parse tree, counted without listing them; None where only
    listing can tell (wildcards, wraps, variables, random or cyclical parts, variants that may repeat)."""
    from dynamicprompts.commands import LiteralCommand, SequenceCommand, VariantCommand

    if node.sampling_method is not None and node.sampling_method.is_nonfinite():
        return None
    if isinstance(node, LiteralCommand):
        return 1
    if isinstance(node, SequenceCommand):  # every combination of its parts, none dropped
        counts = [_combinations(token) for token in node.tokens]
        return None if None in counts else math.prod(counts)
    if isinstance(node, VariantCommand) and node.min_bound == node.max_bound == 1:
        texts = {v.literal for v in node.values if isinstance(v, LiteralCommand) and v.sampling_method is None}
        return len(texts) if len(texts) == len(node.values) else None  # distinct literals: none deduplicated
    return None


def _sample(template: str, mode: str, wildcards: Path | None, count: int, rand) -> list[str]:
    """Up to `count` prompts from the library, its errors turned into TemplateError."""
    from dynamicprompts.enums import SamplingMethod
    from dynamicprompts.sampling_context import SamplingContext
    from pyparsing import ParseBaseException

    method = SamplingMethod.RANDOM if mode == "random" else SamplingMethod.COMBINATORIAL
    context = SamplingContext(default_sampling_method=method, wildcard_manager=_wildcards(wildcards), rand=rand)
    try:
        return [str(p) for p in context.sample_prompts(_tree(template), count)]
    except TemplateError:
        raise
    except ParseBaseException as exc:
        raise TemplateError(_syntax_message(template, exc.loc)) from None
    except RecursionError:
        raise TemplateError("the wildcards refer to each other in a loop") from None
    except (ValueError, KeyError) as exc:  # e.g. an undefined ${variable}
        raise TemplateError(f"cannot expand the template: {exc}") from None


def _tree(template: str):
    """The parse tree, a syntax error as TemplateError."""
    from pyparsing import ParseBaseException

    try:
        return _parsed(template)
    except ParseBaseException as exc:
        raise TemplateError(_syntax_message(template, exc.loc)) from None


@functools.lru_cache(maxsize=4096)
def _parsed(template: str):
    """The template's parse tree: parsing takes milliseconds, a draw from a parsed template some microseconds,
    and a table often repeats one template over many rows and images."""
    from dynamicprompts.parser.parse import parse

    return parse(template)


def _syntax_message(template: str, loc: int) -> str:
    opened, closed = template.count("{"), template.count("}")
    if opened != closed:
        return f"unbalanced braces in the template: {opened} '{{' and {closed} '}}'"
    return (
        f"template syntax error at character {loc + 1} ({template[loc : loc + 20]!r}): "
        "'$' is only allowed as in {2$$a|b} or ${name=...}, and '__' must enclose a wildcard name"
    )


def _wildcards(folder: Path | None):
    """A wildcard manager that refuses unknown wildcards, cached while the folder's files are unchanged."""
    if folder is None:
        return _manager(None, ())
    folder = Path(folder)
    if not folder.is_dir():
        raise TemplateError(f"the wildcard folder {folder} does not exist or is not a folder")
    return _manager(str(folder.resolve()), _signature(folder))


def _signature(folder: Path) -> tuple:
    """Names, sizes and modification times of the folder's files: a changed file gives a new manager."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


@functools.lru_cache(maxsize=8)
def _manager(folder: str | None, signature: tuple):
    from dynamicprompts.wildcards import WildcardManager
    from dynamicprompts.wildcards.utils import clean_wildcard

    class StrictWildcards(WildcardManager):
        def get_values(self, wildcard: str):
            try:  # checked here: the library would log two tracebacks for it, then find nothing
                clean_wildcard(wildcard, wildcard_wrap=self.wildcard_wrap)
            except ValueError:
                raise TemplateError(
                    f"wildcard __{wildcard}__ is refused: a wildcard names a file inside the wildcard folder "
                    "(`__name__` or `__sub/name__`), without '..' or '\\'"
                ) from None
            values = super().get_values(wildcard)
            if len(values) == 0:
                where = f"in the wildcard folder {folder}" if folder else "and no wildcard folder is set"
                raise TemplateError(f"wildcard __{wildcard}__ not found: no {wildcard}.txt (or .json, .yaml) {where}")
            return values

    return StrictWildcards(folder)


def variant_seed(seed: int, index: int) -> int:
    """Seed of image `index` of a row: seed + index (AUTOMATIC1111's convention)."""
    if seed + index > MAX_SEED:
        raise ValueError(f"seed {seed} + image index {index} exceeds 2^64 - 1; use a smaller seed")
    return seed + index


def variant_key(key: str, index: int) -> str:
    """Key of image `index` of a row: the row's key for image 0, else `<key>.<index>`."""
    _check_key(key)
    if index < 0:
        raise ValueError(f"image index must be 0 or more, got {index}")
    return key if index == 0 else _joined(key, str(index))


def variant_keys(key: str, count: int) -> list[str]:
    """`variant_key(key, i)` for i in 0 .. count - 1, the key checked once (tables ask for millions)."""
    _check_key(key)
    return [key, *(_joined(key, str(i)) for i in range(1, count))]


def combination_key(key: str, prompt: str) -> str:
    """Key of one combination of a row's template: `<key>.<10 hex digits of sha256(prompt)>`."""
    _check_key(key)
    return _joined(key, hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:HASH_DIGITS])


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not SAFE_NAME.fullmatch(key):
        raise ValueError(f"{key!r} is not a valid key: use 1-128 letters, digits, '.', '_' or '-'")


def _joined(key: str, suffix: str) -> str:
    """`<key>.<suffix>`, with a long key cut and marked with its own hash so that keys stay distinct."""
    if len(key) + 1 + len(suffix) > MAX_KEY:
        mark = hashlib.sha256(key.encode("utf-8")).hexdigest()[:HASH_DIGITS]
        key = f"{key[: MAX_KEY - len(suffix) - HASH_DIGITS - 2]}.{mark}"
    return f"{key}.{suffix}"


@dataclass(frozen=True)
class Variant:
    """One image of an expanded row."""

    key: str
    prompt: str
    seed: int
    index: int  # image index within the row (or within its combination)


def expand_row(
    key: str,
    prompt: str,
    seed: int,
    num_images: int = 1,
    combinatorial: bool = False,
    wildcards: Path | None = None,
    limit: int = DEFAULT_COMBINATION_LIMIT,
) -> list[Variant]:
    """The images of one row, by the rules above; a plain row with num_images 1 is itself."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a whole number of 1 or more, got {num_images!r}")
    if combinatorial and has_template(prompt):
        groups = [(combination_key(key, p), p) for p in expand_all(prompt, wildcards, limit)]
        return [_variant(k, p, seed, i) for k, p in groups for i in range(num_images)]
    return [_variant(key, expand_random(prompt, variant_seed(seed, i), wildcards), seed, i) for i in range(num_images)]


def _variant(key: str, prompt: str, seed: int, index: int) -> Variant:
    return Variant(variant_key(key, index), prompt, variant_seed(seed, index), index)
