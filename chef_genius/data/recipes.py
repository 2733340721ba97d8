"""The recipe text form: what the model reads (the ingredients) and writes (the whole recipe).

FLAN-T5's SentencePiece vocabulary has no newline token, so a recipe is flattened into one line
with section markers that tokenize cleanly and can be turned back into readable text:

    Title: Garlic Rice Ingredients: 2 c. rice ; 3 cloves garlic Directions: 1. Rinse the rice. 2. Cook it.

The input is built by a source template (``--source-template``, stored with the run and the
model): ``{ingredients}`` is the comma-separated ingredient names (RecipeNLG's NER column when
present, else the ingredient lines), ``{title}`` the recipe's title. Input / output pair files keep
their own input.

``TEMPLATE_VERSION`` is part of the tokenized-data cache key: change it whenever the text form changes.
"""

from __future__ import annotations

import ast
import json
import re
import string
from dataclasses import dataclass, field

TEMPLATE_VERSION = "recipe-v1"
SOURCE_PREFIX = "Write a recipe with these ingredients: "
DEFAULT_SOURCE_TEMPLATE = SOURCE_PREFIX + "{ingredients}"
TEMPLATE_FIELDS = ("ingredients", "title")
ITEM_SEP = " ; "

_TITLE, _INGREDIENTS, _DIRECTIONS = "Title:", "Ingredients:", "Directions:"
_STEP_NUMBER = re.compile(r"(?:^|\s)(\d+)\.\s")


class RowError(ValueError):
    """A row that cannot become a training example; the message is its skip reason."""


@dataclass
class Recipe:
    title: str
    ingredients: list[str]
    directions: list[str]
    names: list[str] = field(default_factory=list)  # bare ingredient names (RecipeNLG's NER column)


def clean(text: str) -> str:
    """One line, single spaces: newlines and tabs have no token in FLAN-T5's vocabulary.

    ``str.split()`` cuts at runs of exactly the characters ``\\s`` matches (both use
    ``str.isspace``; a test checks every code point), six times faster than ``re.sub``."""
    return " ".join(text.split())


def _item(text: str) -> str:
    # The item separator must not appear inside an item, or the recipe would not parse back.
    return clean(text).replace(";", ",")


def parse_list(value) -> list[str]:
    """A list column: a real list, a JSON / Python list literal, or newline-separated text.

    Never ``eval``: literals go through ``json`` or ``ast.literal_eval`` only.
    """
    if value is None:
        raise RowError("missing_field")
    if isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                try:
                    items = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise RowError("unparsable_list") from None
            if not isinstance(items, (list, tuple)):
                raise RowError("unparsable_list")
        else:
            items = text.splitlines()
    else:
        raise RowError("unparsable_list")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise RowError("unparsable_list")
        item = _item(item)
        if item:
            out.append(item)
    return out


def recipe_from_fields(title, ingredients, directions, names=None) -> Recipe:
    if title is None or ingredients is None or directions is None:
        raise RowError("missing_field")
    if not isinstance(title, str):
        raise RowError("missing_field")
    recipe = Recipe(
        title=clean(title),
        ingredients=parse_list(ingredients),
        directions=parse_list(directions),
        names=parse_list(names) if names not in (None, "") else [],
    )
    if not recipe.title or not recipe.ingredients or not recipe.directions:
        raise RowError("empty_text")
    return recipe


def template_fields(template: str) -> set[str]:
    """The fields ``template`` uses; ``ValueError`` (one sentence) for one it cannot fill."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"--source-template {template!r} is not a valid template ({err}); write literal braces as {{{{ and }}}}"
        ) from None
    fields = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"--source-template {template!r}: unknown placeholder {{{name}}}; use "
                f"{{ingredients}} and/or {{title}} (literal braces as {{{{ and }}}})"
            )
        fields.add(name)
    if not fields:
        raise ValueError(
            f"--source-template {template!r} has no placeholder: every recipe would get the same "
            "input; put {ingredients} and/or {title} in it"
        )
    return fields


def fill_template(template: str, ingredients: list[str], title: str = "") -> str:
    return clean(template.format(ingredients=", ".join(ingredients), title=clean(title)))


def format_source(recipe: Recipe, template: str = DEFAULT_SOURCE_TEMPLATE) -> str:
    """The model input: the ingredient names when known (what a user types), else the full lines."""
    return fill_template(template, recipe.names or recipe.ingredients, recipe.title)


def source_from_ingredients(text: str, template: str = DEFAULT_SOURCE_TEMPLATE, title: str = "") -> str:
    """The model input for a user's comma-separated ingredient list (generation)."""
    names = [clean(part) for part in text.split(",")]
    return fill_template(template, [name for name in names if name], title)


def format_target(recipe: Recipe) -> str:
    steps = " ".join(f"{i}. {step}" for i, step in enumerate(recipe.directions, 1))
    items = ITEM_SEP.join(_item(item) for item in recipe.ingredients)
    return f"{_TITLE} {clean(recipe.title)} {_INGREDIENTS} {items} {_DIRECTIONS} {steps}"


def parse_target(text: str) -> Recipe:
    """Turn a generated target back into a recipe; tolerant of a model's imperfect output."""
    text = clean(text)
    title, rest = _split_once(text, _INGREDIENTS)
    ingredients, directions = _split_once(rest, _DIRECTIONS)
    title = title.removeprefix(_TITLE).strip()
    items = [item.strip() for item in ingredients.split(ITEM_SEP.strip())]
    return Recipe(title=title, ingredients=[i for i in items if i], directions=_split_steps(directions))


def _split_once(text: str, marker: str) -> tuple[str, str]:
    head, found, tail = text.partition(marker)
    return (head.strip(), tail.strip()) if found else (text.strip(), "")


def _split_steps(text: str) -> list[str]:
    """Split "1. a 2. b" on the step numbers, accepting only 1, 2, 3... in order."""
    cuts, expected = [], 1
    for match in _STEP_NUMBER.finditer(text):
        if int(match.group(1)) == expected:
            cuts.append((match.start(), match.end()))
            expected += 1
    if not cuts:
        return [text.strip()] if text.strip() else []
    steps = []
    for (_, body_start), (next_start, _) in zip(cuts, cuts[1:] + [(len(text), None)]):
        step = text[body_start:next_start].strip()
        if step:
            steps.append(step)
    return steps


def render(recipe: Recipe) -> str:
    """Readable multi-line text of a recipe."""
    lines = [recipe.title or "(untitled)", "", "Ingredients:"]
    lines += [f"  - {item}" for item in recipe.ingredients]
    lines += ["", "Directions:"]
    lines += [f"  {i}. {step}" for i, step in enumerate(recipe.directions, 1)]
    return "\n".join(lines)
