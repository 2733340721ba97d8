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
"""

from __future__ import annotations

import random

from chef_genius.devtools.sample_data import generate_recipes

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
