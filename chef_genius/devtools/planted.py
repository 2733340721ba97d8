"""Recipes with planted duplicates: the fixture that sets and checks the near-duplicate threshold.

``planted_recipes(n, copies, seed)`` gives the ``n`` generated sample recipes (``sample_data.py``)
followed by ``copies`` altered copies of some of them, and, for each copy, which recipe it copies
and how it was altered:

- ``recased``: title and lines in upper or title case, punctuation and spacing changed;
- ``reordered``: the ingredient lines shuffled (and re-cased);
- ``reworded``: in about half of the steps one word replaced by a synonym, one filler word
  inserted, the ingredients reordered (an edited copy, as aggregated corpora hold them).

The first two are exact duplicates after the normalisation of ``data/dedup.py``; the reworded
ones are near-duplicates. Deterministic for a seed.

The sample generator's recipe space is small (one dish, one main, another adjective: template twins
that any reading calls duplicates), so it cannot say how many *distinct* recipes a threshold
removes. ``distinct_recipes`` / ``planted_stream`` give that corpus, at any size and streamed: each
recipe draws its steps from the steps of every dish, in its own order, and its ingredient lines from
the whole pantry, so two originals share little more than cooking words; a removed original is a
false removal. ``write_foodcom_csv`` writes recipes in Food.com's ``RAW_recipes.csv`` layout.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from chef_genius.devtools.sample_data import (
    ADJECTIVES,
    DISHES,
    MAINS,
    PANTRY,
    TIPS,
    _join,
    _line,
    generate_recipes,
)

KINDS = ("recased", "reordered", "reworded")
SYNONYMS = {
    "add": "stir in",
    "stir": "mix",
    "cook": "heat",
    "bake": "roast",
    "serve": "plate",
    "minutes": "mins",
    "until": "till",
    "large": "big",
    "mix": "combine",
    "pour": "spoon",
    "pan": "skillet",
    "bowl": "dish",
    "chop": "dice",
    "remove": "take",
    "place": "put",
    "heat": "warm",
    "simmer": "cook gently",
    "cover": "lid",
    "season": "flavor",
    "preheat": "heat",
}


def planted_recipes(n: int, copies: int, seed: int = 0) -> tuple[list[dict], list[tuple[int, int, str]]]:
    """(recipes, [(copy index, original index, kind)]): ``n`` originals then ``copies`` copies."""
    rng = random.Random(seed + 7919)
    recipes = generate_recipes(n, seed)
    planted = []
    for c in range(copies):
        original = rng.randrange(n)
        kind = KINDS[c % len(KINDS)]
        recipes.append(_altered(recipes[original], kind, rng, n + c))
        planted.append((n + c, original, kind))
    return recipes, planted


def _altered(recipe: dict, kind: str, rng: random.Random, index: int) -> dict:
    title, ingredients, directions = recipe["title"], list(recipe["ingredients"]), list(recipe["directions"])
    case = rng.choice((str.upper, str.title, str.lower))
    if kind in ("reordered", "reworded"):
        rng.shuffle(ingredients)
    if kind == "reworded":
        directions = [_reworded(step, rng) if rng.random() < 0.5 else step for step in directions]
        at = rng.randrange(len(directions))
        directions[at] = _with_filler(directions[at], rng)
    else:
        directions = [case(step).replace(".", " .").replace(",", " ,") for step in directions]
    return dict(
        title=case(title) + ("!" if kind == "recased" else ""),
        ingredients=[case(i) for i in ingredients],
        directions=directions,
        ner=list(recipe["ner"]),
        link=f"www.example.com/copy/{index}",
        source=recipe["source"],
    )


def _reworded(step: str, rng: random.Random) -> str:
    words = step.split(" ")
    swappable = [i for i, w in enumerate(words) if w.lower().strip(".,") in SYNONYMS]
    for i in rng.sample(swappable, min(len(swappable), 1)):
        bare = words[i].lower().strip(".,")
        words[i] = words[i].lower().replace(bare, SYNONYMS[bare])
    return " ".join(words)


def _with_filler(step: str, rng: random.Random) -> str:
    words = step.split(" ")
    words.insert(rng.randrange(len(words) + 1), rng.choice(("gently", "then", "carefully")))
    return " ".join(words)


# -- a corpus of distinct recipes, any size, streamed -----------------------------------------------
_STEPS = sorted({step.lstrip("*+") for dish in DISHES for step in dish["steps"]} | set(TIPS))
_PANTRY = sorted(PANTRY)


def distinct_recipe(index: int, seed: int = 0) -> dict:
    """Original recipe ``index`` (pure: the same dict for the same index and seed)."""
    rng = random.Random(seed * 1_000_003 + index)
    dish = rng.choice(DISHES)
    name, word, _, qtys = rng.choice(MAINS)
    pantry = rng.sample(_PANTRY, rng.randint(4, 11))
    values = {
        "main": name,
        "extras": _join(pantry[:3]),
        "m": rng.randint(3, 120),
        "temp": rng.choice((325, 350, 375, 400, 425, 450)),
    }
    steps = [step.format(**values) for step in rng.sample(_STEPS, rng.randint(3, 9))]
    title = f"{rng.choice(ADJECTIVES)} {dish['title'].format(main=word)} with {pantry[0].title()}"
    return dict(
        title=title,
        ingredients=[_line(rng.choice(qtys), name)] + [_line(rng.choice(PANTRY[p].split("|")), p) for p in pantry],
        directions=steps,
        ner=[name] + pantry,
        link=f"www.example.com/distinct/{seed}/{index}",
        source="Gathered",
    )


def planted_stream(rows: int, copy_share: float, seed: int = 0) -> Iterator[tuple[dict, tuple[int, str] | None]]:
    """``rows`` recipes: distinct originals with, at a share ``copy_share`` of the rows, an altered copy
    (kinds in turn) of an earlier original; yields (recipe, (original row, kind) or None)."""
    rng = random.Random(seed + 104729)
    original_rows: list[int] = []
    copies = 0
    for row in range(rows):
        if original_rows and rng.random() < copy_share:
            which = rng.randrange(len(original_rows))
            kind = KINDS[copies % len(KINDS)]
            copies += 1
            yield _altered(distinct_recipe(which, seed), kind, rng, row), (original_rows[which], kind)
        else:
            yield distinct_recipe(len(original_rows), seed), None
            original_rows.append(row)


FOODCOM_HEADER = ["name", "id", "minutes", "n_steps", "steps", "ingredients", "n_ingredients"]


def write_foodcom_csv(path: str | Path, recipes: Iterable[dict]) -> None:
    """Recipes as Food.com's ``RAW_recipes.csv`` (lists as Python literals, ingredient names only)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(FOODCOM_HEADER)
        for i, r in enumerate(recipes):
            steps = [s.lower() for s in r["directions"]]
            out.writerow(
                [r["title"].lower(), i, 30, len(steps), repr(steps), repr(r["ingredients"]), len(r["ingredients"])]
            )
